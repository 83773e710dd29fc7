"""Synthetic self-attention with a planted segmentation: every query attends to its own region."""

from __future__ import annotations

import numpy as np
import torch


def random_partition(height: int, width: int, regions: int, seed: int) -> torch.Tensor:
    """`(height, width)` int64 labels 0..regions-1: a Voronoi partition of well-separated random seeds."""
    rng = np.random.default_rng(seed)
    min_gap = 0.6 * np.sqrt(height * width / regions)
    seeds = []
    while len(seeds) < regions:
        candidate = rng.uniform((0, 0), (height, width))
        if all(np.hypot(*(candidate - s)) >= min_gap for s in seeds):
            seeds.append(candidate)
        else:
            min_gap *= 0.999
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    distances = [(ys - sy) ** 2 + (xs - sx) ** 2 for sy, sx in seeds]
    return torch.from_numpy(np.argmin(distances, axis=0))


def planted_attention(partition: torch.Tensor, levels: int = 4, floor: float = 1e-6,
                      noise: float = 0.0, seed: int = 0) -> list[torch.Tensor]:
    """Per-resolution `(h, w, h, w)` attention of `partition` (finest grid), halving `levels - 1` times.

    On the finest grid each query spreads its attention uniformly over the cells of its own region (plus
    `floor`, times optional multiplicative noise). A coarser grid pools it: a coarse query averages the
    maps of its fine queries, a coarse key sums the mass of its fine keys.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = partition.shape
    labels = partition.reshape(-1)
    fine = (labels[:, None] == labels[None, :]).double() + floor
    if noise:
        fine = fine * (1 + noise * torch.rand(fine.shape, generator=generator, dtype=torch.float64))
    fine = fine / fine.sum(dim=1, keepdim=True)
    maps = []
    for level in range(levels):
        s = 2**level
        h, w = height // s, width // s
        pooled = fine.reshape(h, s, w, s, h, s, w, s).mean(dim=(1, 3)).sum(dim=(3, 5))
        maps.append(pooled.float())
    return maps
