"""The paper's K-Means baselines on the same aggregated attention as DiffSeg.

K-Means-C clusters an image's aggregated attention maps (one per query cell, 4096 at 512 px) into a
constant K (the paper uses 6; `DiffSegConfig(method="kmeans-c", num_clusters=K)`); K-Means-S uses K = the
number of ground-truth classes present in the image, so it needs labels and exists for evaluation (the same
config with K set per image). The clusters' mean maps then go through the same label map step as DiffSeg's
proposals (bilinear upsampling and per-pixel argmax); clustering and means are the same as DiffSeg's optional
refinement, seeded by k-means++ instead of the merged proposals.

As a method ("kmeans-c" in `methods.METHODS`), its post-processing is DiffSeg's (`segment.labels` and
`segment.scored`) with this module's `proposals`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import DiffSegConfig
from .refine import refine
from .segment import labels, scored

__all__ = ["kmeans_proposals", "labels", "proposals", "scored"]

SEED = 0
"""Seed of the k-means++ initialization: the same image and K always give the same clusters."""


def kmeans_proposals(attention: torch.Tensor, num_clusters: int, seed: int = SEED) -> torch.Tensor:
    """Mean maps `(K', N)` of the K-Means clusters (K' <= K non-empty ones) of the `(N, N)` attention maps.

    Raises `ValueError` unless 1 <= `num_clusters` <= N.
    """
    if not 1 <= num_clusters <= len(attention):
        raise ValueError(f"num_clusters must be in 1..{len(attention)}, got {num_clusters}")
    return refine(attention, _kmeans_plus_plus(attention, num_clusters, seed))


def proposals(attentions: Sequence[torch.Tensor], config: DiffSegConfig, grid: tuple[int, int],
              with_variants: bool) -> list[list[torch.Tensor]]:
    """K-Means-C's proposals per image of aggregated attention `(N, N)`: the mean maps `(K', N)` of its K =
    `config.num_clusters` clusters, then with `with_variants` those of the counts `stability` compares with.
    (`grid` is the attention methods' common signature, see `segment.proposals`.)"""
    return [[kmeans_proposals(attention, k) for k in _cluster_counts(config.num_clusters, len(attention),
                                                                      with_variants)] for attention in attentions]


def _cluster_counts(clusters: int, cells: int, with_variants: bool) -> list[int]:
    """K, then with `with_variants` the counts K-Means' stability compares with: K - 1 and K + 1, where in
    1..cells."""
    return [clusters] + ([k for k in (clusters - 1, clusters + 1) if 1 <= k <= cells] if with_variants else [])


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
