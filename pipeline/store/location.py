"""Storage locations behind fsspec URLs (local paths, `file://`, `s3://`, `gs://`, ...) and atomic writes."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


class StorageError(RuntimeError):
    """A location cannot be used; the message names it and says why in one line."""


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """The `--storage-options` JSON object (fsspec keyword arguments); `{}` when not given."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise StorageError(f"--storage-options is not valid JSON ({error.msg})") from None
    if not isinstance(options, dict):
        raise StorageError("--storage-options must be a JSON object")
    return options


@dataclass
class Location:
    """A folder or prefix under an fsspec URL. Paths passed to methods are relative to it, '/'-separated.

    Picklable: Ray actors receive a `Location` and reopen the filesystem on their side. `storage_options`
    may hold credentials, so it is never written to outputs or logs (it is left out of `repr`).
    """

    url: str
    """The URL as the user gave it."""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        try:
            self._fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError, TypeError) as error:
            raise StorageError(f"{self.url}: cannot open ({error})") from None
        self.root = root.rstrip("/")

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.storage_options = state["url"], state["storage_options"]
        self.__post_init__()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs

    @property
    def is_local(self) -> bool:
        return isinstance(self._fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """Filesystem path of `relative` (no protocol)."""
        return f"{self.root}/{relative}" if relative else self.root

    def uri(self, relative: str) -> str:
        """Full URL of `relative`, with protocol, as recorded in outputs."""
        return self._fs.unstrip_protocol(self.path(relative))

    def files(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every file under `prefix` (recursive), keyed by path relative to this location, with fsspec's
        details (`size`, and `ETag` on object stores). Empty when nothing is there."""
        base = self.path(prefix)
        self._fs.invalidate_cache(base)  # other processes (the actors) write here; never trust a cached listing
        try:
            found = self._fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise StorageError(f"{self.url}: cannot list ({error})") from None
        root = self.root + "/"
        return {name[len(root):]: info for name, info in found.items()
                if info.get("type", "file") == "file" and name.startswith(root)}

    def read(self, relative: str) -> bytes:
        return self._fs.cat_file(self.path(relative))

    def exists(self, relative: str) -> bool:
        return self._fs.exists(self.path(relative))

    def write(self, relative: str, data: bytes) -> None:
        """Write `data` so that readers see either nothing or the whole file, never part of it.

        Object stores: one PUT (s3fs sends files under 100 MB as a single `put_object`, larger ones as a
        multipart upload, which also appears only when complete). Local disks: a temporary file in the
        same folder (its name starts with `_`, so dataset readers skip it), then an atomic rename.
        """
        target = self.path(relative)
        if not self.is_local:
            self._fs.pipe_file(target, data)
            return
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f"_tmp-{uuid.uuid4().hex}-{os.path.basename(target)}")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
