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


PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2, "mode": "standard"}}
"""botocore settings of the first request to an S3 location (`Location.check_folder`), where the user's
`config_kwargs` do not set them: a wrong endpoint is told in seconds, not after botocore's default minute-long
connect timeout and its retries. Later requests keep the user's settings."""
_UNREACHABLE = {"ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ClientConnectorError", "TimeoutError"}
"""Names of the exception classes (botocore's, aiohttp's, Python's) that mean the store did not answer; by name,
so that this light module imports no store's client library."""
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}
"""botocore's and google-auth's classes for credentials that were not found."""


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

    def check_folder(self, flag: str, advice: str) -> None:
        """Fail fast, before any work, where this location cannot be used as a folder: it is a file, or lies under
        one, or its store cannot be reached or refuses the credentials. One request (`info` of the root, with
        `PROBE_CONFIG` on S3); a location that does not exist yet passes.

        Raises:
            StorageError: one line naming `flag` (omitted for a positional argument: "") and the URL, the cause, and
                `advice` (what to give instead) when it is a file.
        """
        named = f"{flag} {self.url}" if flag else self.url
        try:
            kind = self._probe_fs().info(self.root).get("type")
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise StorageError(f"{named} lies under a file, not a folder; {advice}") from None
        except Exception as error:  # each store's client raises its own types; `_unusable` sorts them
            raise _unusable(named, error, self) from None
        if kind == "file":
            raise StorageError(f"{named} is a file; {advice}")

    @property
    def _protocols(self) -> tuple[str, ...]:
        protocol = self._fs.protocol
        return (protocol,) if isinstance(protocol, str) else tuple(protocol)

    def _probe_fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem for `check_folder`: on S3 a private instance with `PROBE_CONFIG` under the user's own
        `config_kwargs`, else this location's."""
        if "s3" not in self._protocols:
            return self._fs
        config = {**PROBE_CONFIG, **self.storage_options.get("config_kwargs", {})}
        return type(self._fs)(**{**self.storage_options, "config_kwargs": config, "skip_instance_cache": True})

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


def _unusable(named: str, error: Exception, location: Location) -> StorageError:
    """The one line for a store that refused the first request to `location` or did not answer it, with what to
    check."""
    s3 = "s3" in location._protocols
    kinds = {kind.__name__ for kind in type(error).__mro__}
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if kinds & _NO_CREDENTIALS:
        where = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give key and secret in "
                 "--storage-options" if s3 else "give them to its store's client or in --storage-options")
        return StorageError(f"{named}: no credentials found ({reason}); {where}")
    if kinds & _UNREACHABLE:
        where = ("AWS_ENDPOINT_URL, or client_kwargs.endpoint_url in --storage-options" if s3
                 else "--storage-options")
        return StorageError(f"{named}: the store does not answer ({reason}); check its endpoint URL ({where}) "
                            "and the network")
    if isinstance(error, PermissionError):
        check = "its permissions" if location.is_local else "the credentials and what they may do there"
        return StorageError(f"{named}: access denied ({reason}); check {check}")
    return StorageError(f"{named}: cannot be used ({type(error).__name__}: {reason})")
