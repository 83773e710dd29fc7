"""Per-segment statistics of a label map: pixel area and bounding box of every label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Region:
    """One segment of a label map."""

    id: int
    """The label value."""
    area: int
    """Pixels with this label."""
    bbox: tuple[int, int, int, int]
    """Bounding box `(x, y, w, h)` in pixels: left column, top row, width and height."""


def regions(labels: torch.Tensor | np.ndarray) -> list[Region]:
    """Area and bounding box of every label present in the `(H, W)` integer label map, by label value.

    Any integer dtype, tensor (read in place when on the CPU) or array. Works on the map's horizontal runs (maximal
    stretches of one label within a row): a segmentation has a few per row, so after one vectorized pass over the
    pixels to find them, everything else is over runs, not pixels. O(H*W + R log R) for R runs.
    """
    array = labels.numpy(force=True) if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty (H, W) label map, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected integer labels, got {array.dtype}")
    values, row, first, last = _runs(array)
    if values.min() < 0:  # every label present is some run's value
        raise ValueError("labels must be non-negative")
    # Stable: within one label, runs stay in raster order, so its first run is in its top row, its last in its bottom.
    order = np.argsort(values, kind="stable")
    values, row, first, last = values[order], row[order], first[order], last[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)] - 1
    areas = np.add.reduceat(last - first + 1, starts)
    left, right = np.minimum.reduceat(first, starts), np.maximum.reduceat(last, starts)
    top, bottom = row[starts], row[ends]
    return [Region(id=int(label), area=int(area), bbox=(int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)))
            for label, area, x0, y0, x1, y1 in zip(values[starts], areas, left, top, right, bottom)]


def _runs(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of the `(H, W)` map in raster order: each one's label, row, first and last column
    (int64 positions, `R` each)."""
    height, width = array.shape
    begins = np.empty((height, width), dtype=bool)
    begins[:, 0] = True
    np.not_equal(array[:, 1:], array[:, :-1], out=begins[:, 1:])
    flat = np.flatnonzero(begins)
    row, first = np.divmod(flat, width)
    # A run ends just before the next one begins; every row's first pixel begins a run, so that is in its row.
    last = np.r_[flat[1:], height * width] - 1 - row * width
    return array[row, first], row, first, last
