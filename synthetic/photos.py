"""Synthetic photographs: a few flat colored regions under noise, any size, the same for the same seed."""

from __future__ import annotations

import numpy as np
import torch
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


def shapes(size: int, seed: int, count: int = 5, noise: float = 0.04) -> tuple[torch.Tensor, torch.Tensor]:
    """A `size x size` photo of `count` shapes (ellipses and convex polygons, overlapping in painting order) of
    distinct flat colours on a background, and its regions: fp32 pixels `(3, size, size)` in [-1, 1] with Gaussian
    noise of `noise`, and the int64 regions `(size, size)` 0..K-1 (the background 0, then each shape that shows)."""
    rng = np.random.default_rng(seed)
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size
    painted = np.zeros((size, size), dtype=np.int64)
    for index in range(1, count + 1):
        centre, radius, angle = rng.uniform(0.2, 0.8, 2), rng.uniform(0.08, 0.25), rng.uniform(0, np.pi)
        # The pixel's offset from the centre in the shape's own frame, stretched along one axis.
        dy, dx = ys - centre[0], xs - centre[1]
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rng.uniform(0.5, 1.0)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        if index % 2:
            inside = u**2 + v**2 <= radius**2
        else:  # vertices on the circle at increasing angles, roughly evenly spread: a convex polygon, not a sliver
            sides = rng.integers(3, 7)
            spread = np.arange(sides) + rng.uniform(-0.25, 0.25, sides)
            corners = rng.uniform(0, 2 * np.pi) + 2 * np.pi * spread / sides
            cu, cv = radius * np.cos(corners), radius * np.sin(corners)
            inside = np.ones((size, size), dtype=bool)
            for k in range(len(corners)):
                eu, ev = cu[k - 1] - cu[k], cv[k - 1] - cv[k]
                inside &= eu * (v - cv[k]) - ev * (u - cu[k]) <= 0
        painted[inside] = index
    regions = np.unique(painted, return_inverse=True)[1].reshape(size, size)
    pixels = _distinct_colours(int(regions.max()) + 1, rng)[regions] + rng.normal(0, noise, (size, size, 3))
    return (torch.from_numpy(pixels.clip(-1, 1)).permute(2, 0, 1).float(), torch.from_numpy(regions))


def _distinct_colours(count: int, rng: np.random.Generator, gap: float = 0.6) -> np.ndarray:
    """`(count, 3)` RGB colours in [-0.8, 0.8], each at least `gap` (Euclidean) from the others."""
    colours = []
    while len(colours) < count:
        colour = rng.uniform(-0.8, 0.8, 3)
        if all(np.linalg.norm(colour - other) >= gap for other in colours):
            colours.append(colour)
    return np.stack(colours)
