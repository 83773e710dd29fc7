"""Segment descriptors: one vector per segment of a label map, from the same forward's features, so that
segments of different images can be compared (and clustered into dataset-wide classes).

A segment's descriptor is the mean, over the segment's pixels, of the L2-normalized feature of the token under
each pixel (the token grid stretched over the mask: pixel (y, x) of an H x W mask lies in token
(y * h // H, x * w // W) of an h x w grid). The features are those of DiffCut's feature layer
(`features.feature_layer`) for both methods: DiffCut segments them anyway, and DiffSeg reads the same layer during
its own forward (1280 channels on a 16 x 16 grid at 512 px for SD 1.x; 32 x 32 at 1024 px for the SDXL family).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_descriptors(labels: torch.Tensor, features: torch.Tensor, count: int) -> torch.Tensor:
    """fp32 `(count, C)`: the descriptor of each label 0..count-1 of `labels` `(H, W)` (any integer dtype), from
    the features `(h, w, C)` of the image (any float dtype; on the labels' device). A label with no pixel gets
    zeros.

    Computed per (label, token) pair rather than per pixel: the pixels of a mask fall in few distinct pairs (about
    one per token, plus the tokens that segment boundaries cross), so only those are weighed and summed.
    """
    height, width = labels.shape
    h, w, channels = features.shape
    rows = torch.arange(height, device=labels.device) * h // height
    columns = torch.arange(width, device=labels.device) * w // width
    tokens = rows[:, None] * w + columns[None, :]
    pairs, pixels = torch.unique(labels.long() * (h * w) + tokens, return_counts=True)
    segment, token, weight = pairs // (h * w), pairs % (h * w), pixels.float()
    normalized = F.normalize(features.float().reshape(h * w, channels), dim=1)
    sums = torch.zeros(count, channels, device=labels.device)
    sums.index_add_(0, segment, normalized[token] * weight[:, None])
    areas = torch.zeros(count, device=labels.device).index_add_(0, segment, weight)
    return sums / areas.clamp_min(1)[:, None]
