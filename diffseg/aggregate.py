"""Aggregation of multi-resolution self-attention into one attention tensor on the finest grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resolution_weights(grids: Sequence[tuple[int, int]], weights: Sequence[float] | None = None) -> list[float]:
    """Aggregation weight of each grid: `weights` normalized to sum 1, or proportional to the grid side.

    The side is `sqrt(h * w)`, so the paper's square grids (64, 32, 16, 8) get (64, 32, 16, 8) / 120.
    """
    if weights is None:
        weights = [math.sqrt(h * w) for h, w in grids]
    elif len(weights) != len(grids):
        raise ValueError(f"{len(weights)} aggregation weights for {len(grids)} attention resolutions")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def aggregate(maps: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Combine per-resolution attention of one image into `(H*W, H*W)` maps on the finest grid `(H, W)`.

    Args:
        maps: one tensor per resolution, each `(h, w, h, w)` (query y, query x, key y, key x), every key
            map a distribution. The finest grid must be a whole multiple of every other grid.
        weights: per-map aggregation weights (normalized here); None for weights proportional to the side.

    Returns:
        fp32 `(H*W, H*W)`: row `i = y*W + x` is the aggregated key distribution of query cell (y, x).
        For each resolution the key dims are upsampled bilinearly (half-pixel centers) to `(H, W)` and
        renormalized, the query dims repeated to `(H, W)` blocks, and the result added with its weight.
    """
    grids = [tuple(m.shape[:2]) for m in maps]
    for m in maps:
        if m.ndim != 4 or tuple(m.shape[2:]) != tuple(m.shape[:2]):
            raise ValueError(f"attention maps must be (h, w, h, w), got {tuple(m.shape)}")
    height, width = max(grids, key=lambda g: g[0] * g[1])
    for h, w in grids:
        if height % h or width % w:
            raise ValueError(f"attention grid {h}x{w} does not divide the finest grid {height}x{width}")

    out = torch.empty(height * width, height * width, dtype=torch.float32, device=maps[0].device)
    order = sorted(range(len(maps)), key=lambda i: -grids[i][0] * grids[i][1])
    weights = resolution_weights(grids, weights)
    for rank, i in enumerate(order):
        (h, w), weight = grids[i], weights[i]
        keys = maps[i].reshape(h * w, 1, h, w).float()
        if (h, w) != (height, width):
            keys = F.interpolate(keys, size=(height, width), mode="bilinear", align_corners=False)
        keys = keys.reshape(h, 1, w, 1, height * width)
        scale = keys.sum(dim=-1, keepdim=True).div_(weight)
        if rank == 0:  # the finest grid fills `out` directly
            torch.div(keys, scale, out=out.view(h, 1, w, 1, height * width))
        else:
            # Broadcasting into the block view repeats each coarse query row over its block of fine queries.
            out.view(h, height // h, w, width // w, height * width).add_(keys / scale)
    return out
