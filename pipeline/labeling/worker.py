"""`LabelWorker`: one model replica turning input shards into mask files.

Plain Python: the driver runs it as a Ray actor, and anything else can run it in-process. The CPU work overlaps
the model: a reader thread fetches a shard's images ahead of the model and has them decoded and resized in a pool
of threads, another pool computes the segment statistics and encodes the masks of images the model is done with,
and a worker accepts a second shard while the first one is still being written. Both pools have as many threads
as the actor has CPUs, and their work (PIL, numpy, zlib) releases the GIL, so it spreads over the cores.

The model runs on one dedicated thread whichever shard a batch comes from, and nothing else runs torch
operations: CPU kernels keep one OpenMP thread team per calling thread, and two teams on the same cores spin
against each other (measured: 2x slower). So the pools work on numpy arrays (label maps are read in place). The
model's batches are submitted without waiting (`diffseg.overlap.Overlapped`): on a GPU, one batch's
post-processing runs on a second thread and CUDA stream while the next batch's forward runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from diffseg import DiffSeg, DiffSegConfig, ImageError, ModelLoadError, Outcome, stream
from diffseg.defaults import MAX_PIXELS
from diffseg.model import DTYPES
from diffseg.overlap import Overlapped
from diffseg.preprocess import PreparedImage
from diffseg.regions import regions
from diffseg.segment import Segmentation
from diffseg.visualize import label_png

from ..execution.reporter import Reporter
from ..store.dataset import OutputDataset, Row, encode_descriptors
from ..store.inputs import ParquetColumns, Record, Shard, read
from ..store.location import Location
from ..store.prefetch import pool_map, prefetch
from ..store.provenance import environment, now


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker builds its model replica and batches images."""

    model: str
    """Hub id, local diffusers folder, or built-in name (`tiny`)."""
    config: DiffSegConfig = field(default_factory=DiffSegConfig)
    revision: str | None = None
    device: str = "cpu"
    """"cpu" or "cuda" (Ray assigns the GPU; it is always `cuda:0` inside the actor)."""
    dtype: str | None = None
    """Key of `DTYPES`; None: float16 on cuda, float32 on cpu."""
    batch_size: int | None = None
    """Images per UNet forward (same processing size only; short batches are padded); None: the replica's
    `default_batch_size` (1 for a stand-in segmenter that has none)."""
    max_pixels: int = MAX_PIXELS
    """Images with more pixels become error rows (decompression-bomb guard)."""
    threads: int | None = None
    """The actor's CPUs: torch's threads, and the threads of each of its two pools (decoding images, encoding
    masks). None leaves torch's default and gives each pool one thread per core of the machine."""
    descriptors: bool = False
    """Give each segment its descriptor (the rows' `descriptors` column)."""
    gpu_share: float = 1.0
    """The share of its GPU this worker has (Ray's `num_gpus`, at most 1); below 1 the process may allocate only
    that share of the GPU's memory, so that the replicas sharing it cannot starve each other."""


@dataclass(frozen=True)
class Placement:
    """Where a worker reads images and writes masks."""

    source: Location
    destination: Location
    """The output dataset's location."""
    columns: ParquetColumns = field(default_factory=ParquetColumns)


class LabelWorker:
    """Holds one model replica; `process(shard)` writes that shard's mask file and its `_done/` marker."""

    def __init__(self, settings: WorkerSettings, placement: Placement, tally: str | None = None) -> None:
        """Cheap: the model is loaded by `load()` or by the first `process()` (also after a restart). `tally`: the
        name of the job's `executor.Tally`, told the images each `process` has done so far (None: told nothing)."""
        self.settings = settings
        self.placement = placement
        self.tally = tally
        self.output = OutputDataset(placement.destination)
        self._segmenter: DiffSeg | None = None
        self._overlapped: Overlapped | None = None
        self._load_lock = threading.Lock()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffseg-model")
        # Capped here, on the actor's node: the driver's machine may have fewer cores than the actor's.
        self._threads = min(settings.threads or os.cpu_count() or 1, os.cpu_count() or 1)
        # Shared by the shards in progress, so that two of them do not take twice the CPUs.
        self._decoding = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="diffseg-decode")
        self._encoding = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="diffseg-encode")

    def load(self) -> dict[str, Any]:
        """Load the model; returns `{"info": provenance}` or `{"error": one line}` if it cannot be loaded."""
        try:
            return {"info": self.segmenter().info}
        except (ModelLoadError, ValueError) as error:
            return {"error": str(error)}

    def segmenter(self) -> DiffSeg:
        """The model replica, loaded on first use (on the model thread, like all its work)."""
        with self._load_lock:
            if self._segmenter is None:
                self._segmenter = self._model_thread.submit(self._build).result()
                segmenter = self._segmenter
                self._overlapped = Overlapped(segmenter.forward_batch, segmenter.label_batch_scored, segmenter.device,
                                              self._model_thread)
            return self._segmenter

    def _build(self) -> DiffSeg:
        if self.settings.threads:
            torch.set_num_threads(self._threads)
        if self.settings.device == "cuda" and self.settings.gpu_share < 1:
            # Before the model: its batch size is decided at load, within this share (`DiffSeg.default_batch_size`).
            torch.cuda.set_per_process_memory_fraction(self.settings.gpu_share)
        return self.build_segmenter()

    def build_segmenter(self) -> DiffSeg:
        """The model replica of `settings`, built on the model thread. The seam for another model: a subclass
        may return any object with `DiffSeg`'s `info`, `device`, `prepare`, `forward_batch` and
        `label_batch_scored`, and optionally `default_batch_size` (the driver and actor benchmarks run stand-ins
        through the job's whole path)."""
        settings = self.settings
        return DiffSeg.from_pretrained(settings.model, config=settings.config, device=settings.device,
                                       dtype=DTYPES[settings.dtype] if settings.dtype else None,
                                       revision=settings.revision, max_pixels=settings.max_pixels,
                                       descriptors=settings.descriptors)

    def process(self, shard: Shard, run_id: str) -> dict[str, Any]:
        """Segment every image of `shard` and write its mask file; returns its `_done/` marker (with the
        `images_ok` and `images_failed` counts).

        Images that cannot be read or decoded become error rows. Raises when the shard itself cannot be
        read or written (the driver retries it).
        """
        segmenter = self.segmenter()
        size = self.settings.batch_size or getattr(segmenter, "default_batch_size", 1)

        def segment(images: list[PreparedImage]) -> list[Future]:  # returns at once; see `Overlapped`
            return self._overlapped.submit(images, size)

        # Bounded lookahead, so memory is: 4 batches of prepared images (2.4 MB each at 512 px) wait for the model,
        # and masks for encoding (a batch's arrive at once), 2 per thread so that none idles between images.
        decoded = prefetch(lambda: self._decoded(shard, segmenter), 4 * size)
        outcomes = stream(decoded, segment, size)
        report, rows = Reporter(self.tally), []
        for row in pool_map(_row, outcomes, self._encoding, 2 * self._threads + size):
            rows.append(row)
            report(len(rows))
        provenance = {**segmenter.info, **environment(), "run_id": run_id, "created": now(),
                      "batch_size": size,
                      "input": self.placement.source.uri(""), "shard": {"name": shard.name,
                                                                       **shard.identity(self.placement.source)}}
        return self.output.write(shard.name, rows, provenance)

    def _decoded(self, shard: Shard, segmenter: DiffSeg) -> Iterator[tuple[Record, PreparedImage | ImageError]]:
        """The shard's records in order, each with its image prepared (in the decoding pool, up to two images per
        thread ahead), or why it cannot be read or prepared."""
        records = read(shard, self.placement.source, self.placement.columns)
        yield from pool_map(partial(_prepared, segmenter), records, self._decoding, 2 * self._threads)


def _prepared(segmenter: DiffSeg, record: Record) -> tuple[Record, PreparedImage | ImageError]:
    """`record` with its image prepared for `segmenter`, or why it cannot be read or prepared."""
    if record.data is None:
        return record, ImageError(record.image_id, record.error or "unknown error")
    try:
        return record, segmenter.prepare(record.data, name=record.image_id)
    except ImageError as error:
        return record, error


def _row(outcome: Outcome[Record, Future]) -> Row:
    """The output row of one image: its mask (once the model has made it) and segments, or its error. In the
    encoding pool: numpy only."""
    record = outcome.key
    if outcome.error is not None:
        return Row.failed(record.image_id, record.source_uri, outcome.error.reason)
    return segmentation_row(record.image_id, record.source_uri, outcome.output.result())


def segmentation_row(image_id: str, source_uri: str, result: Segmentation) -> Row:
    """The output row of an image's segmentation (on CPU): the mask PNG, and per segment its area, box and scores.
    Numpy only (see the module docstring)."""
    mask, score, stability = result.labels, result.score.numpy(), result.stability.numpy()
    found = regions(mask)
    segments = [{"id": r.id, "area": r.area, "bbox": list(r.bbox), "stability": float(stability[r.id]),
                 "score": float(score[r.id])} for r in found]
    descriptors = None if result.descriptors is None else encode_descriptors(result.descriptors.numpy())
    return Row(image_id, source_uri, width=mask.shape[1], height=mask.shape[0], mask=label_png(mask),
               num_segments=len(found), segments=segments, descriptors=descriptors, warning=result.warning)
