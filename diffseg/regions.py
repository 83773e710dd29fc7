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

    Runs in O(H*W + K*(H + W)): one pass marks which rows and columns each label occupies.
    """
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty (H, W) label map, got shape {array.shape}")
    if array.min() < 0:
        raise ValueError("labels must be non-negative")
    height, width = array.shape
    flat = array.ravel().astype(np.int64)
    count = int(flat.max()) + 1
    areas = np.bincount(flat, minlength=count)
    in_row = np.zeros((count, height), dtype=bool)
    in_col = np.zeros((count, width), dtype=bool)
    in_row[array, np.arange(height)[:, None]] = True
    in_col[array, np.arange(width)[None, :]] = True
    result = []
    for label in np.flatnonzero(areas):
        rows, cols = np.flatnonzero(in_row[label]), np.flatnonzero(in_col[label])
        bbox = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
        result.append(Region(id=int(label), area=int(areas[label]), bbox=bbox))
    return result
