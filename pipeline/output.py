"""The output dataset: one mask Parquet file per input shard, `_done/` markers, and the run manifest.

Layout under the output URL (names starting with `_` are bookkeeping that dataset readers skip)::

    SHARD.parquet           masks of one input shard (SHARD may contain '/': tar and Parquet inputs
                            keep their folder layout)
    _done/SHARD.json        written after SHARD.parquet is complete: the shard is finished
    _diffseg.json           the manifest: the settings every file here was made with
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from diffseg import DiffSegConfig

from .storage import Location, StorageError

SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("source_uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("mask", pa.binary()),
    ("num_segments", pa.int32()),
    ("segments", pa.list_(pa.struct([("id", pa.int32()), ("area", pa.int64()), ("bbox", pa.list_(pa.int32()))]))),
    ("status", pa.string()),
    ("error", pa.string()),
])
"""Columns of every mask file (the README's "Outputs" table). `width`/`height` are the mask's size: the image's
original size, or the crop's size in center-crop mode. `bbox` is `[x, y, w, h]` in pixels."""

METADATA_KEY = "diffseg"
"""Parquet footer key holding the JSON provenance of a mask file."""
MANIFEST = "_diffseg.json"
DONE = "_done"


class OutputConflict(RuntimeError):
    """The output already holds masks made with other settings; the message says which differ."""


@dataclass
class Row:
    """One output row: an image's mask, or why it has none."""

    image_id: str
    source_uri: str
    width: int | None = None
    height: int | None = None
    mask: bytes | None = None
    num_segments: int | None = None
    segments: list[dict[str, Any]] | None = None
    status: str = "ok"
    error: str | None = None

    @classmethod
    def failed(cls, image_id: str, source_uri: str, error: str) -> Row:
        return cls(image_id, source_uri, status="error", error=error)


def encode_shard(rows: list[Row], provenance: dict[str, Any]) -> bytes:
    """The Parquet file of `rows`, with `provenance` as JSON in the footer under `METADATA_KEY`."""
    columns = {name: [getattr(row, name) for row in rows] for name in SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=SCHEMA.with_metadata({METADATA_KEY: json.dumps(provenance)}))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def read_provenance(location: Location, relative: str) -> dict[str, Any]:
    """The provenance stored in the footer of the mask file at `relative`."""
    with location.fs.open(location.path(relative), "rb") as file:
        return json.loads(pq.read_metadata(file).metadata[METADATA_KEY.encode()])


def read_manifest(location: Location) -> dict[str, Any]:
    """The manifest of the mask dataset at `location`.

    Raises:
        StorageError: there is none (not a labeling job's output), or it cannot be read.
    """
    try:
        return json.loads(location.read(MANIFEST))
    except FileNotFoundError:
        raise StorageError(f"{location.url}: not a labeling job's output (no {MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise StorageError(f"{location.url}: cannot read {MANIFEST} ({error})") from None


def manifest_config(manifest: dict[str, Any]) -> DiffSegConfig:
    """The algorithm settings a manifest records (settings this version does not know are left out)."""
    known = {f.name for f in dataclasses.fields(DiffSegConfig)}
    return DiffSegConfig(**{k: v for k, v in manifest.get("config", {}).items() if k in known})


@dataclass
class OutputDataset:
    """The mask dataset under `location`: which shards are done, and writing new ones exactly once."""

    location: Location

    def check(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """Compare `identity` with the manifest's, key by key; returns the manifest (None if there is none).

        Raises:
            OutputConflict: a value differs; mixing would silently combine masks made differently, so
                the caller must choose another output.
        """
        if not self.location.exists(MANIFEST):
            return None
        existing = json.loads(self.location.read(MANIFEST))
        changed = sorted(key for key in identity if existing.get(key) != identity[key])
        if changed:
            raise OutputConflict(
                f"{self.location.url} already holds masks made with a different {', '.join(changed)} "
                f"(see {self.location.uri(MANIFEST)}); write to another --output")
        return existing

    def claim(self, identity: dict[str, Any]) -> None:
        """`check` `identity`, and record it as the manifest if there is none yet."""
        if self.check(identity) is None:
            self.location.write(MANIFEST, json.dumps(identity, indent=2, sort_keys=True).encode())

    def done(self) -> set[str]:
        """Names of the shards whose mask file is complete (their `_done/` marker exists); one listing."""
        return {key.removesuffix(".json") for key in
                (name[len(DONE) + 1:] for name in self.location.files(DONE)) if key.endswith(".json")}

    def write(self, shard: str, rows: list[Row], provenance: dict[str, Any]) -> dict[str, Any]:
        """Write the shard's mask file in one piece, then its marker, and return the marker. A retry after a
        crash between the two rewrites the same file name, so a shard never appears twice."""
        self.location.write(f"{shard}.parquet", encode_shard(rows, provenance))
        marker = {"shard": shard, "file": f"{shard}.parquet", "rows": len(rows),
                  "images_ok": sum(row.status == "ok" for row in rows),
                  "images_failed": sum(row.status != "ok" for row in rows),
                  "run_id": provenance.get("run_id"), "created": provenance.get("created")}
        self.location.write(f"{DONE}/{shard}.json", json.dumps(marker).encode())
        return marker
