"""Per-segment confidence of a label map, for filtering weak pseudo-labels.

- `score` in [0, 1]: how clearly the segment's proposal wins its pixels. The mean, over the segment's pixels, of
  the margin `(v1 - v2) / v1` between the largest and second-largest upsampled proposal values at the pixel
  (`labels.label_map_with_margins`): 1 where no other proposal has any mass there, 0 where two tie.
- `stability` in [0, 1]: how little the segment changes when the merge threshold moves, in the spirit of SAM's
  stability score. The label map is made again from the same attention with every threshold times 0.9 and times
  1.1 (`STABILITY_STEPS`); in each, the segment's best-matching segment is the one with the largest IoU; the
  stability is the smaller of the two IoUs. The three label maps compared are made at the processing size (the
  UNet's input, longer side 512 by default), whatever the size of the mask; a segment whose proposal wins no pixel
  at that size has stability 0. For K-Means (`method="kmeans-c"`), which has no threshold, the maps are made with
  K - 1 and K + 1 clusters instead (K + 1 only when K = 1).

All on the label map's device, without host synchronization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

STABILITY_STEPS = (0.9, 1.1)
"""Factors applied to every merge threshold for the label maps `stability` compares with."""


def segment_means(labels: torch.Tensor, values: torch.Tensor, count: int) -> torch.Tensor:
    """fp32 `(count,)`: the mean of `values` `(H, W)` over the pixels of each label 0..count-1 of `labels`
    (0 for a label with no pixel)."""
    flat = labels.reshape(-1).long()
    sums = torch.zeros(count, dtype=torch.float64, device=labels.device)
    sums.index_add_(0, flat, values.reshape(-1).double())
    return (sums / _areas(flat, count).clamp_min(1)).float()


def best_iou(labels: torch.Tensor, count: int, other: torch.Tensor, other_count: int) -> torch.Tensor:
    """fp32 `(count,)`: for each label 0..count-1 of `labels`, the largest IoU with any label of `other` (two label
    maps of one size)."""
    flat, other_flat = labels.reshape(-1).long(), other.reshape(-1).long()
    joint = _areas(flat * other_count + other_flat, count * other_count).view(count, other_count)
    union = _areas(flat, count)[:, None] + _areas(other_flat, other_count)[None, :] - joint
    return (joint / union.clamp_min(1)).amax(dim=1).float()


def stability(labels: torch.Tensor, count: int, variants: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """fp32 `(count,)`: per label of `labels`, the smallest over `variants` (label maps with their label counts,
    made with moved settings) of its `best_iou` there."""
    ious = [best_iou(labels, count, other, other_count) for other, other_count in variants]
    # No variant (K-Means with K = 1 on a one-cell grid): nothing moved, nothing changed.
    return torch.stack(ious).amin(dim=0) if ious else torch.ones(count, device=labels.device)


def by_label(per_proposal: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`(K,)` values per label from `(K,)` values per proposal and the `(K,)` label of each proposal (-1: none, see
    `labels.label_map_with_margins`); entries past the last label are 0."""
    count = len(table)
    slots = torch.where(table >= 0, table, count)  # proposals without a label write to a slot cut off after
    values = torch.zeros(count + 1, dtype=per_proposal.dtype, device=table.device)
    return values.scatter_(0, slots, per_proposal)[:count]


def _areas(flat: torch.Tensor, count: int) -> torch.Tensor:
    """int64 pixel count of each value 0..count-1 of the int64 `flat` (sync-free, unlike `bincount` on a GPU)."""
    ones = torch.ones(1, dtype=torch.int64, device=flat.device).expand(flat.numel())
    return torch.zeros(count, dtype=torch.int64, device=flat.device).index_add_(0, flat, ones)
