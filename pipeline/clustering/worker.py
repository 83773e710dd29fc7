"""`ClassWorker`: reads the shards of a labeling output made with `--descriptors`: counts and samples their
descriptors for training, and writes each shard's semantic masks once the centroids are known.

Plain Python: the driver runs it as a Ray actor, one shard at a time; tests run it in-process. A shard is read in
batches of `BATCH_ROWS` rows, so an actor's memory is one batch of input plus the shard's output rows. The masks
of a batch are decoded, mapped to classes and encoded in a pool of threads (PIL's decoder and zlib release the
GIL), while faiss searches the batch's descriptors at once on the actor's CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from diffseg.visualize import label_png

from ..execution.reporter import Reporter
from ..store.dataset import OutputDataset, decode_descriptors, decode_mask
from ..store.location import Location
from ..store.prefetch import pool_map
from ..store.provenance import now
from .centroids import Nearest
from .output import CLASS_SCHEMA, ClassRow, semantic
from .sample import picks, usable_segments

BATCH_ROWS = 256
"""Input rows read at a time: some 20 MB with 2-megapixel masks and 20 segments of 1,280-dim descriptors each."""
COUNTED = ["status", "num_segments"]
READ = ["image_id", "source_uri", "mask", "num_segments", "status", "error", "descriptors"]
"""The input columns the semantic masks are made from."""

Found = tuple[np.ndarray, np.ndarray] | str
"""A row's segments' classes and distances (`Nearest`), or why it has none."""


class ClassWorker:
    """Counts, samples and assigns the descriptors of one input shard per call."""

    def __init__(self, source: Location, destination: Location, threads: int = 1, tally: str | None = None) -> None:
        """`threads`: the actor's CPUs, for faiss and the masks' pool (capped by the machine's cores). `tally`: the
        name of the job's `executor.Tally`, told the rows each `assign` has done so far (None: told nothing)."""
        self.source = OutputDataset(source)
        self.tally = tally
        self.output = OutputDataset(destination, CLASS_SCHEMA)
        self._threads = max(1, min(threads, os.cpu_count() or 1))
        faiss.omp_set_num_threads(self._threads)
        self._masks = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="diffseg-classes")

    def count(self, shard: str) -> int:
        """The shard's segments that have descriptors (those of its `ok` rows)."""
        return int(sum(usable_segments(batch).sum() for batch in self._batches(shard, COUNTED)))

    def sample(self, shard: str, size: int, seed: list[int]) -> np.ndarray:
        """float16 `(n, dim)`: `size` of the shard's descriptors drawn uniformly (`sample.picks` with
        `np.random.default_rng(seed)`), in file order; n < `size` when some drawn rows have broken descriptors
        (the driver records the sample it got).

        Raises:
            ValueError: the shard's descriptors do not all have the same dimension.
        """
        segments = np.concatenate([usable_segments(batch) for batch in self._batches(shard, COUNTED)])
        rows, ids = picks(segments, size, np.random.default_rng(seed))
        drawn: list[np.ndarray] = []
        start = 0
        for batch in self._batches(shard, ["descriptors", "num_segments"]):
            first, last = np.searchsorted(rows, [start, start + batch.num_rows])
            drawn += _drawn(batch, rows[first:last] - start, ids[first:last])
            start += batch.num_rows
        if len({vector.shape for vector in drawn}) > 1:
            raise ValueError(f"{shard}: descriptors of different dimensions")
        return np.stack(drawn) if drawn else np.empty((0, 0), dtype=np.float16)

    def assign(self, shard: str, centroids: np.ndarray, provenance: dict[str, Any]) -> dict[str, Any]:
        """Write the shard's semantic masks (`CLASS_SCHEMA`) and its `_done/` marker; returns the marker.

        Every input row gives one output row: an error row stays one (with its error), and so does a row whose
        descriptors or mask are missing or broken. Raises when the shard itself cannot be read or written.
        """
        nearest = Nearest(centroids)
        rows: list[ClassRow] = []
        report = Reporter(self.tally)
        for batch in self._batches(shard, READ):
            records = batch.to_pylist()
            rows.extend(pool_map(_row, zip(records, _classified(records, nearest)), self._masks, 2 * self._threads))
            report(len(rows))
        return self.output.write(shard, rows, {**provenance, "created": now(),
                                               "shard": {"name": shard, "input": self.source.shard_uri(shard)}})

    def _batches(self, shard: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The input shard's `columns`, `BATCH_ROWS` rows at a time."""
        return self.source.shard_batches(shard, columns, BATCH_ROWS)


def _descriptors(blob: bytes | None, num_segments: int | None) -> np.ndarray:
    """A row's float16 `(num_segments, dim)` descriptors; `ValueError` saying why they cannot be used."""
    if blob is None or not num_segments:
        raise ValueError("no descriptors")
    descriptors = decode_descriptors(blob, num_segments)
    if not np.isfinite(descriptors).all():
        raise ValueError("descriptors that are not finite")
    return descriptors


def _drawn(batch: pa.RecordBatch, rows: np.ndarray, segments: np.ndarray) -> list[np.ndarray]:
    """The float16 `(dim,)` descriptors of segment `segments[i]` of row `rows[i]` of `batch`, but those of rows whose
    descriptors cannot be used."""
    drawn = []
    for row, segment in zip(rows, segments):
        try:
            drawn.append(_descriptors(batch["descriptors"][row].as_py(), batch["num_segments"][row].as_py())[segment])
        except ValueError:
            continue  # the sample is that much smaller: the driver records the size it trained on
    return drawn


def _classified(records: list[dict[str, Any]], nearest: Nearest) -> list[Found]:
    """Each record's classes and distances, from one search over the batch's descriptors, or why it has none."""
    found: list[Found | None] = []  # None: searched below
    blocks: list[np.ndarray] = []
    for record in records:
        if record["status"] != "ok":
            found.append(record["error"] or "not labeled")
            continue
        try:
            block = _descriptors(record["descriptors"], record["num_segments"])
        except ValueError as error:
            found.append(f"cannot use its descriptors: {error}")
            continue
        if block.shape[1] != nearest.dim:
            found.append(f"its descriptors have {block.shape[1]} dimensions, the centroids {nearest.dim}")
            continue
        found.append(None)
        blocks.append(block)
    if blocks:
        classes, distances = nearest(np.concatenate(blocks))
        ends = np.cumsum([len(block) for block in blocks])
        searched = iter(zip(np.split(classes, ends[:-1]), np.split(distances, ends[:-1])))
        found = [next(searched) if item is None else item for item in found]
    return found


def _row(item: tuple[dict[str, Any], Found]) -> ClassRow:
    """The output row of one input record: its semantic mask, classes and distances, or why it has none. In the
    masks' pool: numpy and PIL only."""
    record, found = item
    if isinstance(found, str):
        return ClassRow.failed(record["image_id"], record["source_uri"], found)
    classes, distances = found
    try:
        labels = decode_mask(record["mask"])
        png = label_png(semantic(labels, classes))  # ValueError unless (H, W)
    except (OSError, ValueError) as error:
        return ClassRow.failed(record["image_id"], record["source_uri"], f"cannot decode its mask ({error})")
    return ClassRow(record["image_id"], record["source_uri"], width=labels.shape[1], height=labels.shape[0], mask=png,
                    num_segments=len(classes), classes=classes.tolist(), distances=distances.tolist())
