"""Timing that the benchmarks share: a step's minimum wall time over repeats, the device drained around it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA runs asynchronously; the CPU needs no wait)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], repeat: int, device: torch.device) -> tuple[Any, float]:
    """`step()`'s result and its minimum seconds over `repeat` runs (after a warm-up when repeating)."""
    times, result = [], None
    for _ in range(repeat + (repeat > 1)):
        synchronize(device)
        start = time.perf_counter()
        result = step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return result, min(times[-repeat:])
