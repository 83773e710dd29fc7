"""DiffSeg post-processing: attention maps in, label maps out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .aggregate import aggregate
from .baselines import kmeans_proposals
from .config import DiffSegConfig
from .labels import label_map
from .merge import merge
from .refine import refine


def segment_from_attention(
    maps: Sequence[torch.Tensor],
    config: DiffSegConfig | None = None,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Segment images from their self-attention, exactly as DiffSeg does after the UNet forward.

    Args:
        maps: one tensor per attention resolution, each `(B, h, w, h, w)` or `(h, w, h, w)`: query dims
            first, averaged over heads and layers, every key map a distribution. Any order; the finest
            grid must be a whole multiple of the others.
        config: algorithm settings (`method`, `kl_threshold`, `num_points`, `weights`, `refine`,
            `num_clusters` are used here); defaults to `DiffSegConfig()`.
        output_size: `(height, width)` of the label maps; default the finest grid upsampled 8x (the
            pixel size of the image the UNet saw).

    Returns:
        int64 labels `(B, height, width)`, or `(height, width)` for unbatched maps; per image 0..K-1.
    """
    config = config or DiffSegConfig()
    images, grid, output_size, batched = _unbatch(maps, output_size)
    labels = torch.stack([_segment_one(image, grid, config, output_size) for image in images])
    return labels if batched else labels[0]


def _unbatch(maps: Sequence[torch.Tensor], output_size: tuple[int, int] | None
            ) -> tuple[list[list[torch.Tensor]], tuple[int, int], tuple[int, int], bool]:
    """Per-image lists of per-resolution maps from batched `(B, h, w, h, w)` or single `(h, w, h, w)` maps,
    with the finest grid, the output size (default: that grid upsampled 8x) and whether `maps` was batched."""
    batched = maps[0].ndim == 5
    if any(m.ndim != (5 if batched else 4) for m in maps):
        raise ValueError("attention maps must all be (B, h, w, h, w) or all (h, w, h, w)")
    if not batched:
        maps = [m.unsqueeze(0) for m in maps]
    grid = max((tuple(m.shape[1:3]) for m in maps), key=lambda g: g[0] * g[1])
    output_size = tuple(output_size) if output_size is not None else (grid[0] * 8, grid[1] * 8)
    return [[m[b] for m in maps] for b in range(maps[0].shape[0])], grid, output_size, batched


def _segment_one(maps: list[torch.Tensor], grid: tuple[int, int], config: DiffSegConfig,
                 output_size: tuple[int, int]) -> torch.Tensor:
    attention = aggregate(maps, config.weights)
    if config.method == "kmeans-c":
        proposals = kmeans_proposals(attention, config.num_clusters)
    else:
        proposals = merge(attention, grid, config.num_points, config.thresholds)
        if config.refine:
            proposals = refine(attention, proposals)
    return label_map(proposals, grid, output_size)
