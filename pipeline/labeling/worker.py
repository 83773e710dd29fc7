"""`LabelWorker`: one model replica turning input shards into mask files.

Plain Python: the driver runs it as a Ray actor, and anything else can run it in-process. Storage and
decoding overlap the model: a reader thread fetches and decodes a shard's images ahead of the model, and
a worker accepts a second shard while the first one is still being encoded and written. The model runs
on one dedicated thread whichever shard a batch comes from: CPU kernels keep one OpenMP thread team per
calling thread, and two teams on the same cores spin against each other (measured: 2x slower).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from diffseg import DiffSeg, DiffSegConfig, ImageError, ModelLoadError, Outcome, stream
from diffseg.defaults import MAX_PIXELS
from diffseg.model import DTYPES
from diffseg.preprocess import PreparedImage
from diffseg.regions import regions
from diffseg.visualize import label_png

from .output import OutputDataset, Row
from .prefetch import prefetch
from .provenance import environment, now
from .sources import ParquetColumns, Record, Shard, read
from .storage import Location


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
    batch_size: int = 1
    """Images per UNet forward (same processing size only; short batches are padded)."""
    max_pixels: int = MAX_PIXELS
    """Images with more pixels become error rows (decompression-bomb guard)."""
    threads: int | None = None
    """CPU threads for torch; None leaves torch's default."""


@dataclass(frozen=True)
class Placement:
    """Where a worker reads images and writes masks."""

    source: Location
    output: Location
    columns: ParquetColumns = field(default_factory=ParquetColumns)


class LabelWorker:
    """Holds one model replica; `process(shard)` writes that shard's mask file and its `_done/` marker."""

    def __init__(self, settings: WorkerSettings, placement: Placement) -> None:
        """Cheap: the model is loaded by `load()` or by the first `process()` (also after a restart)."""
        self.settings = settings
        self.placement = placement
        self.output = OutputDataset(placement.output)
        self._segmenter: DiffSeg | None = None
        self._load_lock = threading.Lock()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffseg-model")

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
            return self._segmenter

    def _build(self) -> DiffSeg:
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        return self.build_segmenter()

    def build_segmenter(self) -> DiffSeg:
        """The model replica of `settings`, built on the model thread. The seam for another model: a subclass
        may return any object with `DiffSeg`'s `info`, `prepare` and `segment_batch` (the driver benchmark runs a
        no-op one through the job's whole path)."""
        settings = self.settings
        return DiffSeg.from_pretrained(settings.model, config=settings.config, device=settings.device,
                                       dtype=DTYPES[settings.dtype] if settings.dtype else None,
                                       revision=settings.revision, max_pixels=settings.max_pixels)

    def process(self, shard: Shard, run_id: str) -> dict[str, Any]:
        """Segment every image of `shard` and write its mask file; returns its `_done/` marker (with the
        `images_ok` and `images_failed` counts).

        Images that cannot be read or decoded become error rows. Raises when the shard itself cannot be
        read or written (the driver retries it).
        """
        segmenter = self.segmenter()
        size = self.settings.batch_size

        def segment(images: list[PreparedImage]) -> list[torch.Tensor]:  # on the model thread (module docstring)
            return self._model_thread.submit(segmenter.segment_batch, images, size).result()

        decoded = prefetch(lambda: self._decoded(shard, segmenter), 4 * size)
        rows = [_row(outcome) for outcome in stream(decoded, segment, size)]
        provenance = {**segmenter.info, **environment(), "run_id": run_id, "created": now(),
                      "batch_size": self.settings.batch_size,
                      "input": self.placement.source.uri(""), "shard": {"name": shard.name,
                                                                       **shard.identity(self.placement.source)}}
        return self.output.write(shard.name, rows, provenance)

    def _decoded(self, shard: Shard, segmenter: DiffSeg) -> Iterator[tuple[Record, PreparedImage | ImageError]]:
        """The shard's records, each with its image prepared, or why it cannot be read or prepared."""
        for record in read(shard, self.placement.source, self.placement.columns):
            if record.data is None:
                yield record, ImageError(record.image_id, record.error or "unknown error")
                continue
            try:
                prepared: PreparedImage | ImageError = segmenter.prepare(record.data, name=record.image_id)
            except ImageError as error:
                prepared = error
            yield record, prepared


def _row(outcome: Outcome[Record, torch.Tensor]) -> Row:
    """The output row of one image: its mask and segments, or its error."""
    record, mask = outcome.key, outcome.output
    if outcome.error is not None:
        return Row.failed(record.image_id, record.source_uri, outcome.error.reason)
    found = regions(mask)
    return Row(record.image_id, record.source_uri, width=mask.shape[1], height=mask.shape[0], mask=label_png(mask),
               num_segments=len(found), segments=[{"id": r.id, "area": r.area, "bbox": list(r.bbox)} for r in found])
