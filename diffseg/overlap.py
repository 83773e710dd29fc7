"""Running a segmenter's batches asynchronously: on a GPU, one batch's post-processing overlaps the next one's
forward."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import torch

from .preprocess import PreparedImage

IN_FLIGHT = 2
"""Batches submitted and not finished at most: one in its forward, one in its post-processing."""


class Overlapped:
    """Submits batches without waiting for them; each image's result comes as a `Future`.

    A batch is `forward(images, batch_size)` (e.g. `DiffSeg.forward_batch`) then `post(images, maps)` (e.g.
    `DiffSeg.label_batch` or `label_batch_scored`). The forward runs on `model_thread` (the one thread that runs the
    model, see `pipeline.labeling.worker`). On a GPU the post-processing runs on a second thread and its own CUDA
    stream, so the device works on one batch's post-processing while the model thread launches the next batch's
    forward. On CPU both run on the model thread: two threads would compete for the same cores.

    Example::

        overlapped = Overlapped(segmenter.forward_batch, segmenter.label_batch, segmenter.device,
                                ThreadPoolExecutor(1))
        futures = overlapped.submit(images, batch_size=8)  # returns at once
        labels = [future.result() for future in futures]
    """

    def __init__(self, forward: Callable[[Sequence[PreparedImage], int], Any],
                 post: Callable[[Sequence[PreparedImage], Any], list[Any]], device: torch.device,
                 model_thread: Executor, post_thread: bool | None = None) -> None:
        """
        Args:
            forward: runs the model on 1 to batch_size images of one processing size (on `model_thread`).
            post: turns `forward`'s output into one result per image, on the CPU.
            device: the model's device.
            model_thread: the executor that runs the forwards (one thread).
            post_thread: post-process on a second thread; None: on a GPU only.
        """
        self._forward, self._post, self._device = forward, post, torch.device(device)
        self._model_thread = model_thread
        gpu = self._device.type == "cuda"
        separate = gpu if post_thread is None else post_thread
        self._post_thread = ThreadPoolExecutor(1, thread_name_prefix="diffseg-post") if separate else None
        # High priority: the device runs a batch's post-processing kernels as soon as they are queued, between the
        # next forward's, so that batch's results reach the CPU side early.
        self._stream = torch.cuda.Stream(self._device, priority=-1) if separate and gpu else None
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()

    def submit(self, images: Sequence[PreparedImage], batch_size: int) -> list[Future]:
        """Start 1 to `batch_size` images of one processing size; returns a `Future` of each image's result. Waits
        first while `IN_FLIGHT` earlier batches are not finished, so memory stays bounded however fast the callers
        (any number of threads) submit."""
        with self._lock:
            while len(self._pending) >= IN_FLIGHT:
                self._pending.popleft().exception()
            if self._post_thread is None:
                results = self._model_thread.submit(self._whole, images, batch_size)
            else:
                maps = self._model_thread.submit(self._forward_marked, images, batch_size)
                results = self._post_thread.submit(self._on_stream, images, maps)
            self._pending.append(results)
        return _per_image(results, len(images))

    def _whole(self, images: Sequence[PreparedImage], batch_size: int) -> list[Any]:
        return self._post(images, self._forward(images, batch_size))

    def _forward_marked(self, images: Sequence[PreparedImage], batch_size: int) -> tuple[Any, torch.cuda.Event | None]:
        """`forward`, with an event recorded on the model thread's CUDA stream right after its kernels were queued
        (on a GPU): where the forward's outputs are complete, and nothing later."""
        output = self._forward(images, batch_size)
        if self._stream is None:
            return output, None
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self._device))
        return output, done

    def _on_stream(self, images: Sequence[PreparedImage], forward: Future) -> list[Any]:
        """`post` after the forward of `forward`, on this object's CUDA stream when there is one."""
        evidence, done = forward.result()
        if self._stream is None:
            return self._post(images, evidence)
        # Not `wait_stream`: by now the model thread may have queued part of the next forward behind this one.
        self._stream.wait_event(done)
        for tensor in device_tensors(evidence):
            # Freed on this thread while the model thread allocates: keep the memory until this stream is done.
            tensor.record_stream(self._stream)
        with torch.cuda.stream(self._stream):
            return self._post(images, evidence)


def device_tensors(output: Any) -> list[torch.Tensor]:
    """The CUDA tensors of a forward's output, however nested in lists and tuples (per image, `DiffSeg.forward_batch`
    gives a `Forward` of DiffSeg's attention maps or DiffCut's features, and optionally the features). CPU tensors
    are left out: they have no stream to record."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_cuda else []
    if output is None:
        return []
    return [tensor for part in output for tensor in device_tensors(part)]


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
