"""Synthetic photographs: a few flat colored regions under noise, any size, the same for the same seed."""

from __future__ import annotations

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A synthetic RGB image with a few flat colored regions and mild noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.zeros((height, width, 3), dtype=np.float64)
    for color, (cy, cx) in zip(rng.integers(0, 255, (4, 3)), rng.uniform(0, 1, (4, 2))):
        inside = (ys / height - cy) ** 2 + (xs / width - cx) ** 2 < 0.08
        array[inside] = color
    array += rng.normal(0, 60, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="RGB")
