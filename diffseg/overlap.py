"""Running a segmenter's batches asynchronously: on a GPU, one batch's post-processing overlaps the next one's
forward."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import torch

from .preprocess import PreparedImage
from .segmenter import DiffSeg

IN_FLIGHT = 2
"""Batches submitted and not finished at most: one in its forward, one in its post-processing."""


class Overlapped:
    """Submits `DiffSeg` batches without waiting for them; each image's label map comes as a `Future`.

    The forward runs on `model_thread` (the one thread that runs the model, see `pipeline.labeling.worker`).
    On a GPU the post-processing (`DiffSeg.label_batch`) runs on a second thread and its own CUDA stream, so the
    device works on one batch's post-processing while the model thread launches the next batch's forward. On CPU
    both run on the model thread: two threads would compete for the same cores.

    Example::

        overlapped = Overlapped(segmenter, ThreadPoolExecutor(1))
        futures = overlapped.submit(images, batch_size=8)  # returns at once
        labels = [future.result() for future in futures]
    """

    def __init__(self, segmenter: DiffSeg, model_thread: Executor, post_thread: bool | None = None) -> None:
        """
        Args:
            segmenter: the model replica.
            model_thread: the executor that runs its forwards (one thread).
            post_thread: post-process on a second thread; None: on a GPU only.
        """
        self.segmenter = segmenter
        self._model_thread = model_thread
        gpu = segmenter.device.type == "cuda"
        separate = gpu if post_thread is None else post_thread
        self._post_thread = ThreadPoolExecutor(1, thread_name_prefix="diffseg-post") if separate else None
        self._stream = torch.cuda.Stream(segmenter.device) if separate and gpu else None
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()

    def submit(self, images: Sequence[PreparedImage], batch_size: int) -> list[Future]:
        """Start segmenting 1 to `batch_size` images of one processing size; returns a `Future` of each image's
        label map (as `DiffSeg.segment_batch` gives it). Waits first while `IN_FLIGHT` earlier batches are not
        finished, so memory stays bounded however fast the callers (any number of threads) submit."""
        with self._lock:
            while len(self._pending) >= IN_FLIGHT:
                self._pending.popleft().exception()
            if self._post_thread is None:
                labels = self._model_thread.submit(self.segmenter.segment_batch, images, batch_size)
            else:
                maps = self._model_thread.submit(self.segmenter.attention_batch, images, batch_size)
                labels = self._post_thread.submit(self._label, images, maps)
            self._pending.append(labels)
        return _per_image(labels, len(images))

    def _label(self, images: Sequence[PreparedImage], maps: Future) -> list[torch.Tensor]:
        """`DiffSeg.label_batch` on this object's CUDA stream, after the forward that made `maps`."""
        attention = maps.result()
        if self._stream is None:
            return self.segmenter.label_batch(images, attention)
        # The forward's kernels were queued on the device's default stream before `maps` resolved.
        self._stream.wait_stream(torch.cuda.default_stream(self.segmenter.device))
        for image_maps in attention:
            for tensor in image_maps:
                # Freed on this thread while the model thread allocates: keep the memory until this stream is done.
                tensor.record_stream(self._stream)
        with torch.cuda.stream(self._stream):
            return self.segmenter.label_batch(images, attention)


def _per_image(batch: Future, count: int) -> list[Future]:
    """One `Future` per image of `batch` (a `Future` of a list of `count` results), resolved with it."""
    parts: list[Future] = [Future() for _ in range(count)]

    def resolve(done: Future) -> None:
        error = done.exception()
        for index, part in enumerate(parts):
            if error is not None:
                part.set_exception(error)
            else:
                part.set_result(done.result()[index])

    batch.add_done_callback(resolve)
    return parts
