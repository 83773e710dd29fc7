"""The output dataset: one mask Parquet file per input shard, `_done/` markers, and the run manifest.

Layout under the output URL (names starting with `_` are bookkeeping that dataset readers skip)::

    SHARD.parquet           masks of one input shard (SHARD may contain '/': tar and Parquet inputs
                            keep their folder layout)
    _done/SHARD.json        written after SHARD.parquet is complete: the shard is finished, and the input
                            files it covers (key, size, etag or mtime)
    _diffseg.json           the manifest: the settings every file here was made with
    _changes/RUN_ID.json    input files that changed or vanished since the shard covering them was written,
                            as the run RUN_ID found them
    _runs/part-NNNNN.json   a run's new image shards start at part-NNNNN: from there up to the next such record,
                            the shards' files follow each other in key order (`OutputDataset.covered`)
    _runs/RUN_ID.failures.jsonl
                            the images the run RUN_ID could not label, one JSON object a line (`image_id`,
                            `source_uri`, `error`, `shard`); none when it labeled them all (`FailureLog`)
    _runs/RUN_ID.ignored.jsonl
                            the files under the input that the run RUN_ID left out (hidden, or not of the input's
                            kind), one JSON object a line (`key`); none when it left none out (`ignored_log`)

This module is the format's one writer and one reader: `OutputDataset` writes shards and reads rows, the
manifest and provenance back; `decode_mask` is the one decoder of a mask PNG (`diffseg.visualize.label_png`
encodes it).
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from diffseg import DiffSegConfig

from .inputs import ParquetColumns, SourceFile
from .location import Location, StorageError

MASK_COLUMNS = (("image_id", pa.string()), ("source_uri", pa.string()), ("width", pa.int32()),
                ("height", pa.int32()), ("mask", pa.binary()), ("num_segments", pa.int32()))
"""The columns every mask dataset begins with (labeling outputs, pseudo-class outputs), so that every reader of
masks (evaluation, export, preview, Ray Data, `datasets`) reads any of them; `status` and `error` follow each
dataset's own columns (`mask_schema`)."""


def mask_schema(own: Sequence[tuple[str, pa.DataType]], trailing: Sequence[tuple[str, pa.DataType]] = ()
                ) -> pa.Schema:
    """The columns of a mask dataset's files: `MASK_COLUMNS`, its `own`, `status` and `error`, then `trailing`."""
    return pa.schema([*MASK_COLUMNS, *own, ("status", pa.string()), ("error", pa.string()), *trailing])


SCHEMA = mask_schema([("segments", pa.list_(pa.struct([("id", pa.int32()), ("area", pa.int64()),
                                                      ("bbox", pa.list_(pa.int32())), ("stability", pa.float32()),
                                                      ("score", pa.float32())])))],
                     trailing=[("descriptors", pa.binary()), ("warning", pa.string())])
"""Columns of every mask file (docs/outputs.md, the data contract). `width`/`height` are the mask's size: the image's
original size, or the crop's size in center-crop mode. `bbox` is `[x, y, w, h]` in pixels. `descriptors` (with
`--descriptors`, else null): the segments' descriptors as float16 little-endian, row-major `(num_segments, dim)`,
row i for segment id i (`decode_descriptors`). `warning`: why an `ok` row's mask may be coarser than the settings
ask for (DiffCut's and kway's cut stopped at its work bound); null normally, and in files written before it existed."""

METADATA_KEY = "diffseg"
"""Parquet footer key holding the JSON provenance of a mask file."""
MANIFEST = "_diffseg.json"
DONE = "_done"
CHANGES = "_changes"
RUNS = "_runs"
FILE = "__filename"
"""Not a column of the files: asked for among the columns of `OutputDataset.rows` or `.take`, the mask file the
row is in, relative to the output (what `OutputDataset.provenance` takes)."""
MARKERS_AT_ONCE = 32
"""`_done/` markers `OutputDataset.covered` fetches together: concurrent requests on object stores, while what is
held at once stays bounded (32 markers of 1,000 files are about 3 MB of JSON)."""
Covered = tuple[str, str, SourceFile]
"""A file a finished shard covers, as `(key, shard, file)`: ordered by key first, as `heapq.merge` takes them."""


class RunLog:
    """A list a run keeps under the output's `_runs/`, one JSON object a line, written as its records come: what is
    held is the file's buffer, never the list. The file is made at the first record: a run with none writes none.
    Records are values (JSON), whatever they hold; the file's name is the caller's, never taken from them."""

    def __init__(self, location: Location, name: str) -> None:
        self.location, self.name = location, name
        self.count = 0
        self._file: Any = None
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (made into one line of JSON).

        Raises:
            ValueError: the log is closed (a record after `close` would be lost).
        """
        if self._closed:
            raise ValueError(f"{self.location.uri(self.name)}: written to after it was closed")
        if self._file is None:
            self.location.fs.makedirs(self.location.path(RUNS), exist_ok=True)
            self._file = self.location.fs.open(self.location.path(self.name), "wb")
        self._file.write(json.dumps(record).encode() + b"\n")
        self.count += 1

    @property
    def uri(self) -> str:
        """The file's URI; "" while there is none (no record yet)."""
        return self.location.uri(self.name) if self._file is not None else ""

    def close(self) -> None:
        """Complete the file (on object stores, upload it); again does nothing."""
        self._closed = True
        if self._file is not None:
            self._file.close()


class FailureLog(RunLog):
    """The images a run could not label (`failure_log`), written as the shards' failures come: what is held is one
    shard's. A run that labeled every image writes none."""

    def add(self, shard: str, failures: Iterable[dict[str, Any]]) -> None:
        """Append `failures` (as `OutputDataset.write` returns them) of the shard `shard`."""
        for failure in failures:
            self.write({**failure, "shard": shard})


class OutputConflict(RuntimeError):
    """The output already holds masks made with other settings; the message says which differ."""


@dataclass
class MaskRow:
    """One row of a mask dataset, in the columns every one has (`MASK_COLUMNS`): an image's mask, or why it has
    none. Each dataset's row type adds its own columns (`Row`; `pipeline.clustering.output.ClassRow`)."""

    image_id: str
    source_uri: str
    width: int | None = None
    height: int | None = None
    mask: bytes | None = None
    num_segments: int | None = None
    _: KW_ONLY  # so that a row type's own columns come next when rows are written positionally
    status: str = "ok"
    error: str | None = None

    @classmethod
    def failed(cls, image_id: str, source_uri: str, error: str) -> Self:
        return cls(image_id, source_uri, status="error", error=error)


@dataclass
class Row(MaskRow):
    """One labeling output row (`SCHEMA`)."""

    segments: list[dict[str, Any]] | None = None
    descriptors: bytes | None = None
    warning: str | None = None


def mask_file(shard: str) -> str:
    """The mask file of a shard, relative to the output."""
    return f"{shard}.parquet"


def encode_shard(rows: Sequence[Any], provenance: dict[str, Any], schema: pa.Schema = SCHEMA) -> bytes:
    """The Parquet file of `rows` (each with an attribute per column of `schema`: `Row`s for `SCHEMA`), with
    `provenance` as JSON in the footer under `METADATA_KEY`."""
    columns = {name: [getattr(row, name) for row in rows] for name in schema.names}
    table = pa.Table.from_pydict(columns, schema=schema.with_metadata({METADATA_KEY: json.dumps(provenance)}))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def decode_mask(png: bytes) -> np.ndarray:
    """The `(H, W)` int64 label map of a row's `mask` (an 8-bit or 16-bit PNG).

    Raises:
        OSError: `png` is not an image.
    """
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image, dtype=np.int64)


def encode_descriptors(descriptors: np.ndarray) -> bytes:
    """A row's `descriptors` value from a `(num_segments, dim)` array (stored as float16 little-endian)."""
    return np.ascontiguousarray(descriptors, dtype="<f2").tobytes()


def decode_descriptors(blob: bytes, num_segments: int) -> np.ndarray:
    """The float16 `(num_segments, dim)` descriptors of a row (`encode_descriptors`); row i is segment id i."""
    values = np.frombuffer(blob, dtype="<f2")
    if num_segments < 1 or values.size % num_segments:
        raise ValueError(f"{values.size} descriptor values do not split into {num_segments} segments")
    return values.reshape(num_segments, -1)


def manifest_config(manifest: dict[str, Any]) -> DiffSegConfig:
    """The algorithm settings a manifest records (settings this version does not know are left out)."""
    known = {f.name for f in dataclasses.fields(DiffSegConfig)}
    return DiffSegConfig(**{k: v for k, v in manifest.get("config", {}).items() if k in known})


def manifest_columns(manifest: dict[str, Any]) -> ParquetColumns:
    """The Parquet input columns a manifest records (what reading a row's source back needs)."""
    return ParquetColumns(**manifest.get("columns") or {})


@dataclass
class OutputDataset:
    """The mask dataset under `location`: which shards are done, writing new ones exactly once, and reading it
    back. Reads see the mask files that were there when this object first read rows."""

    location: Location
    schema: pa.Schema = SCHEMA
    """The files' columns: `SCHEMA` for masks; other datasets in this layout give theirs (the pseudo-classes of
    `pipeline.clustering`), and read with `SCHEMA` they give its columns that they share."""
    _masks: ds.Dataset | None = field(default=None, init=False, repr=False, compare=False)

    def check(self, identity: dict[str, Any]) -> dict[str, Any] | None:
        """Compare `identity` with the manifest's, key by key; returns the manifest (None if there is none).

        Raises:
            OutputConflict: a value differs; mixing would silently combine masks made differently, so
                the caller must choose another output.
        """
        if not self.location.exists(MANIFEST):
            return None
        existing = self.manifest()
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

    def write(self, shard: str, rows: Sequence[Any], provenance: dict[str, Any]) -> dict[str, Any]:
        """Write the shard's mask file (`rows` as `encode_shard` takes them) in one piece, then its marker, and
        return the marker with `failures` added: the shard's rows that are not `ok`, as `{"image_id", "source_uri",
        "error"}` (the driver's `FailureLog`; the marker file stays small without them). A retry after a crash
        between the two writes rewrites the same file name, so a shard never appears twice. The marker lists the
        input files the shard covers (`provenance["shard"]["files"]`, when given), so that the next run knows them
        from the markers alone (`covered`)."""
        self.location.write(mask_file(shard), encode_shard(rows, provenance, self.schema))
        marker = {"shard": shard, "file": mask_file(shard), "rows": len(rows),
                  "images_ok": sum(row.status == "ok" for row in rows),
                  "images_failed": sum(row.status != "ok" for row in rows),
                  "run_id": provenance.get("run_id"), "created": provenance.get("created")}
        warned = sum(row.warning is not None for row in rows) if "warning" in self.schema.names else 0
        if warned:
            marker["images_warned"] = warned
        covered = provenance.get("shard", {}).get("files")
        if covered is not None:
            marker["files"] = [{key: file.get(key) for key in ("key", "size", "etag", "mtime")} for file in covered]
        self.location.write(f"{DONE}/{shard}.json", json.dumps(marker).encode())
        failures = [{"image_id": row.image_id, "source_uri": row.source_uri, "error": row.error} for row in rows
                    if row.status != "ok"]
        return {**marker, "failures": failures}

    def shard_uri(self, shard: str) -> str:
        """The URI of the shard's mask file."""
        return self.location.uri(mask_file(shard))

    def shard_batches(self, shard: str, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        """The `columns` of the shard's mask file, `batch_size` rows at a time (what is held stays bounded).

        Raises:
            OSError: the file cannot be read.
        """
        with self.location.fs.open(self.location.path(mask_file(shard)), "rb") as opened:
            yield from pq.ParquetFile(opened).iter_batches(batch_size=batch_size, columns=list(columns))

    def finished_paths(self) -> list[str]:
        """Filesystem paths of the finished shards' mask files (those with a `_done/` marker), sorted by shard."""
        return [self.location.path(mask_file(shard)) for shard in sorted(self.done())]

    def start_run(self, first: str) -> None:
        """Record that the new shards of the run starting now are numbered from the image shard `first`.

        A run's new shards take the files no finished shard covers in key order, so their files follow each other
        in key order from one shard to the next; the record tells `covered` where such a sequence begins. Written
        before the first of them is handed out; a record left by a run that finished nothing only splits a
        sequence in two, which costs nothing."""
        self.location.write(f"{RUNS}/{first}.json", json.dumps({"first_shard": first, "created": time.time()}).encode())

    def covered(self, finished: Iterable[str]) -> list[Iterator[Covered]]:
        """The input files that the shards `finished` cover, as they were when each was written: sequences of
        `(key, shard, file)` in key order, for `sources.Comparison` to merge with the listing.

        The image shards of each run (see `start_run`) make one sequence, its `_done/` markers read
        `MARKERS_AT_ONCE` at a time as it is iterated, so what is held is a few markers per run. Shards named by
        their file (tar and Parquet inputs: one file each) and image shards written before runs were recorded
        make one more sequence (the first), read at once and sorted. A marker written before markers listed files is
        completed from its mask file's footer (the provenance's `shard.files`).

        Raises (also while iterating):
            StorageError: a marker, or the footer an old marker needs, cannot be read; or the markers of one run do
                not follow key order.
        """
        numbered = sorted((int(found[1]), name) for name in finished if (found := re.fullmatch(r"part-(\d+)", name)))
        starts = sorted(int(found[1]) for key in self.location.files(RUNS)
                        if (found := re.fullmatch(rf"{RUNS}/part-(\d+)\.json", key)))
        runs: dict[int, list[str]] = {}
        unordered = sorted(set(finished) - {name for _, name in numbered})
        for number, name in numbered:
            run = bisect.bisect_right(starts, number) - 1
            if run < 0:
                unordered.append(name)
            else:
                runs.setdefault(run, []).append(name)
        sequences = [self._in_order(names) for names in runs.values()]
        if unordered:
            sequences.insert(0, iter(sorted((f.key, shard, f) for shard, files in self.markers(unordered)
                                            for f in files)))
        return sequences

    def markers(self, names: Sequence[str]) -> Iterator[tuple[str, tuple[SourceFile, ...]]]:
        """Each of the finished shards `names`, in that order, with the input files it covers (from its `_done/`
        marker, `MARKERS_AT_ONCE` fetched together).

        Raises (while iterating):
            StorageError: a marker, or the footer an old marker needs, cannot be read.
        """
        for start in range(0, len(names), MARKERS_AT_ONCE):
            paths = [self.location.path(f"{DONE}/{name}.json") for name in names[start:start + MARKERS_AT_ONCE]]
            try:
                fetched = self.location.fs.cat(paths)
                markers = [json.loads(fetched[path]) for path in paths]
            except (OSError, ValueError, KeyError) as error:
                raise StorageError(f"{self.location.url}: cannot read the {DONE} markers ({error})") from None
            yield from ((marker["shard"], self._covered(marker)) for marker in markers)

    def _covered(self, marker: dict[str, Any]) -> tuple[SourceFile, ...]:
        """The input files a marker's shard covers: its own list, else its mask file's provenance."""
        if "files" in marker:
            return tuple(SourceFile(f["key"], f["size"], f["etag"], f.get("mtime")) for f in marker["files"])
        provenance = self.provenance(marker["file"])
        files, root = provenance.get("shard", {}).get("files"), provenance.get("input", "").rstrip("/") + "/"
        if files is None:
            raise StorageError(f"{self.location.url}: {marker['file']} does not record which input files it covers "
                               "(written by an older version); label into another --output")
        return tuple(SourceFile(f.get("key") or f["uri"].removeprefix(root), f["size"], f["etag"], f.get("mtime"))
                     for f in files)

    def _in_order(self, names: Sequence[str]) -> Iterator[Covered]:
        """The files of one run's shards `names` (in number order), checked to follow each other in key order."""
        last = ""
        for shard, files in self.markers(names):
            for file in files:
                if file.key <= last:
                    raise StorageError(f"{self.location.url}: {DONE}/{shard}.json lists {file.key!r} after {last!r}, "
                                       f"out of key order (see {RUNS}/); label into another --output")
                last = file.key
                yield last, shard, file

    def remove_unfinished(self) -> list[str]:
        """Delete the mask files that have no `_done/` marker and return their names: what a run stopped between
        writing a mask file and its marker leaves. Readers would see their rows, and the files they cover go to
        new shards, so keeping them would show those images twice."""
        found = self.location.files()
        done = {mask_file(key[len(DONE) + 1:].removesuffix(".json")) for key in found
                if key.startswith(f"{DONE}/") and key.endswith(".json")}
        unfinished = sorted(key for key in found if key.endswith(".parquet") and key not in done
                            and not any(part.startswith(("_", ".")) for part in key.split("/")))
        if unfinished:
            self.location.fs.rm([self.location.path(key) for key in unfinished])
        return unfinished

    @contextmanager
    def failure_log(self, run_id: str) -> Iterator[FailureLog]:
        """The `FailureLog` of the run `run_id`, closed (its file complete) when the block ends."""
        log = FailureLog(self.location, f"{RUNS}/{run_id}.failures.jsonl")
        try:
            yield log
        finally:
            log.close()

    def ignored_log(self, run_id: str) -> RunLog:
        """The list of the input files the run `run_id` left out (`_runs/RUN_ID.ignored.jsonl`, records `{"key":
        KEY}`), made at its first record; the caller closes it. Its name is the run id's, never a key's: `run_id`
        is made by the job (hex), the keys come from the input."""
        return RunLog(self.location, f"{RUNS}/{run_id}.ignored.jsonl")

    def write_changes(self, run_id: str, changes: dict[str, Any]) -> str:
        """Write `changes` (what a run found changed or vanished in the input) as `_changes/RUN_ID.json`; returns
        its URI."""
        name = f"{CHANGES}/{run_id}.json"
        self.location.write(name, json.dumps(changes, indent=1).encode())
        return self.location.uri(name)

    def manifest(self) -> dict[str, Any]:
        """The manifest: the settings every mask file here was made with.

        Raises:
            StorageError: there is none (not a labeling job's output), or it cannot be read.
        """
        try:
            return json.loads(self.location.read(MANIFEST))
        except FileNotFoundError:
            raise StorageError(f"{self.location.url}: not a labeling job's output (no {MANIFEST})") from None
        except (OSError, ValueError) as error:
            raise StorageError(f"{self.location.url}: cannot read {MANIFEST} ({error})") from None

    def provenance(self, file: str) -> dict[str, Any]:
        """The provenance in the footer of the mask file `file` (relative to the output, as `FILE` gives it).

        Raises:
            StorageError: the file or its footer cannot be read.
        """
        try:
            with self.location.fs.open(self.location.path(file), "rb") as opened:
                return json.loads(pq.read_metadata(opened).metadata[METADATA_KEY.encode()])
        except (OSError, ValueError) as error:
            raise StorageError(f"{self.location.url}: cannot read the provenance of {file} ({error})") from None

    def column(self, name: str) -> list[Any]:
        """Column `name` of every row, in the order `rows` gives them (a row's index is its position for `take`).

        Raises:
            StorageError: the mask files cannot be read.
        """
        try:
            return self._dataset().to_table(columns=[name]).column(name).to_pylist()
        except (OSError, ValueError) as error:
            raise self._unreadable(error) from None

    def rows(self, columns: Sequence[str], batch_size: int = 1024) -> Iterator[dict[str, Any]]:
        """Every row as a dict of `columns` (`schema` names or `FILE`), in the output's order. Reads
        `batch_size` rows at a time, so memory stays bounded: keep it small when reading `mask`.

        Raises:
            StorageError: the mask files cannot be read.
        """
        try:
            for batch in self._dataset().to_batches(columns=list(columns), batch_size=batch_size):
                yield from self._relative(batch.to_pylist())
        except (OSError, ValueError) as error:
            raise self._unreadable(error) from None

    def take(self, positions: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
        """The rows at `positions` (indexes in the order of `rows`), in that order, as dicts of `columns`.

        Raises:
            StorageError: the mask files cannot be read.
        """
        try:
            return self._relative(self._dataset().take(list(positions), columns=list(columns)).to_pylist())
        except (OSError, ValueError) as error:
            raise self._unreadable(error) from None

    def _dataset(self) -> ds.Dataset:
        """The mask files as one Arrow dataset, listed on first use (pyarrow skips the `_` bookkeeping)."""
        if self._masks is None:
            self.location.fs.invalidate_cache(self.location.root)  # jobs in other processes write here
            # With the current schema, not the first file's: files written before `stability`/`score` existed read
            # with those fields null, and newer files keep them whichever file pyarrow would have looked at first.
            self._masks = ds.dataset(self.location.root, format="parquet", filesystem=self.location.fs,
                                     schema=self.schema)
        return self._masks

    def _relative(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` with their `FILE` (a filesystem path) made relative to the output."""
        prefix = self.location.root + "/"
        for row in rows:
            if FILE in row:
                row[FILE] = row[FILE].removeprefix(prefix)
        return rows

    def _unreadable(self, error: Exception) -> StorageError:
        return StorageError(f"{self.location.url}: cannot read the masks ({error})")
