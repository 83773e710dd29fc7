"""The paper's K-Means baselines on the same aggregated attention as DiffSeg.

K-Means-C clusters an image's aggregated attention maps (one per query cell, 4096 at 512 px) into a
constant K (the paper uses 6); K-Means-S uses K = the number of ground-truth classes present in the image,
so it needs labels and exists for evaluation. The clusters' mean maps then go through the same label map
step as DiffSeg's proposals (bilinear upsampling and per-pixel argmax); clustering and means are the
same as DiffSeg's optional refinement, seeded by k-means++ instead of the merged proposals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .aggregate import aggregate
from .labels import label_map
from .refine import refine
from .segment import unbatch

KMEANS_C_CLUSTERS = 6
"""K of the paper's K-Means-C baseline."""


def kmeans_from_attention(maps: Sequence[torch.Tensor], num_clusters: int | Sequence[int] = KMEANS_C_CLUSTERS,
                          output_size: tuple[int, int] | None = None,
                          weights: Sequence[float] | None = None, seed: int = 0) -> torch.Tensor:
    """Label maps from K-Means on the aggregated attention.

    Args:
        maps: per-resolution attention, each `(B, h, w, h, w)` or `(h, w, h, w)`, as for
            `segment_from_attention`.
        num_clusters: K for every image, or one K per image (K-Means-S). At most h*w.
        output_size: `(height, width)` of the label maps; default the finest grid upsampled 8x.
        weights: aggregation weight per resolution; None = proportional to the grid side.
        seed: seed of the k-means++ initialization; the same seed gives the same labels.

    Returns:
        int64 labels `(B, height, width)`, or `(height, width)` for unbatched maps; per image 0..K'-1 with
        K' <= K (clusters that win no pixel get no label).
    """
    images, grid, output_size, batched = unbatch(maps, output_size)
    ks = [num_clusters] * len(images) if isinstance(num_clusters, int) else list(num_clusters)
    if len(ks) != len(images):
        raise ValueError(f"{len(ks)} cluster counts for {len(images)} images")
    labels = []
    for image, k in zip(images, ks):
        if not 1 <= k <= grid[0] * grid[1]:
            raise ValueError(f"num_clusters must be in 1..{grid[0] * grid[1]}, got {k}")
        attention = aggregate(image, weights)
        labels.append(label_map(refine(attention, _kmeans_plus_plus(attention, k, seed)), grid, output_size))
    stacked = torch.stack(labels)
    return stacked if batched else stacked[0]


def _kmeans_plus_plus(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means++ initial centers `(k, D)`: each next center drawn with probability proportional to the
    squared distance to the nearest center so far."""
    generator = torch.Generator().manual_seed(seed)
    norms = (points * points).sum(dim=1)
    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    nearest = torch.full((len(points),), float("inf"), dtype=points.dtype, device=points.device)
    for _ in range(k - 1):
        center = points[chosen[-1]]
        distance = (norms - 2 * points @ center + center @ center).clamp_min(0)
        nearest = torch.minimum(nearest, distance)
        if nearest.sum() <= 0:
            break
        chosen.append(int(torch.multinomial((nearest / nearest.sum()).cpu().float(), 1, generator=generator)))
    while len(chosen) < k:  # fewer distinct points than k: repeat one; its duplicate cluster stays empty
        chosen.append(chosen[0])
    return points[chosen]
