"""Synthetic self-attention with a planted segmentation: every query attends to its own region."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
    return pyramid(fine / fine.sum(dim=1, keepdim=True), (height, width), levels)


def blurred_attention(regions: torch.Tensor, grid: tuple[int, int], blur: float = 1.0, levels: int = 4,
                      floor: float = 1e-6) -> list[torch.Tensor]:
    """Per-resolution `(h, w, h, w)` attention on the finest `grid` (then halving `levels - 1` times) of the int64
    pixel `regions` `(H, W)` 0..K-1, whose sides are whole multiples of the grid's, with blurred boundaries.

    Each region's soft mask on the grid is the share of each cell's pixels it holds (area downsampling), blurred
    by a Gaussian of `blur` cells (edges reflected) and renormalized so that the masks sum to 1 per cell. Region
    k's keys are its soft mask normalized to a distribution; a query attends to the regions' keys mixed by its
    cell's soft masks (so a query on a boundary attends to both sides), plus `floor`; coarser grids pool it as
    `planted_attention` does.
    """
    count = int(regions.max()) + 1
    one_hot = F.one_hot(regions, count).permute(2, 0, 1)[None].double()
    soft = _gaussian(F.adaptive_avg_pool2d(one_hot, grid), blur)[0]
    members = (soft / soft.sum(dim=0, keepdim=True)).reshape(count, -1)
    fine = members.T @ (members / members.sum(dim=1, keepdim=True)) + floor
    return pyramid(fine / fine.sum(dim=1, keepdim=True), grid, levels)


def pyramid(fine: torch.Tensor, grid: tuple[int, int], levels: int) -> list[torch.Tensor]:
    """fp32 `(h, w, h, w)` maps of the fp64 `(N, N)` attention `fine` on `grid` and of `levels - 1` grids each half
    the last: a coarse query averages the maps of its fine queries, a coarse key sums the mass of its fine keys."""
    height, width = grid
    maps = []
    for level in range(levels):
        s = 2**level
        h, w = height // s, width // s
        pooled = fine.reshape(h, s, w, s, h, s, w, s).mean(dim=(1, 3)).sum(dim=(3, 5))
        maps.append(pooled.float())
    return maps


def _gaussian(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """`maps (1, K, h, w)` blurred by a separable Gaussian of standard deviation `sigma` cells, cut at 3 sigma,
    edges reflected; `sigma` 0 leaves them as they are."""
    if sigma <= 0:
        return maps
    radius = max(1, round(3 * sigma))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=maps.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    count = maps.shape[1]
    padded = F.pad(maps, (radius, radius, 0, 0), mode="reflect")
    rows = F.conv2d(padded, taps.view(1, 1, 1, -1).expand(count, 1, 1, -1), groups=count)
    padded = F.pad(rows, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(padded, taps.view(1, 1, -1, 1).expand(count, 1, -1, 1), groups=count)
