"""Label maps from proposals: bilinear upsampling and per-pixel argmax ("non-maximum suppression")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Upsampled proposal values held at once, bounding memory for large output sizes (64 MiB of fp32).
CHUNK_ELEMENTS = 2**24


def label_map(proposals: torch.Tensor, grid: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel argmax of the proposals upsampled to `output_size`, relabelled 0..K'-1.

    Args:
        proposals: `(K, H*W)` maps on the grid `(H, W)`.
        output_size: `(height, width)` of the label map in pixels.

    Returns:
        int64 `(height, width)`. Labels are consecutive from 0 and keep the proposals' order; proposals
        that win no pixel get no label. Ties go to the earlier proposal.
    """
    height, width = output_size
    maps = proposals.float().reshape(len(proposals), 1, *grid)
    best = torch.full((height, width), float("-inf"), device=proposals.device)
    labels = torch.zeros((height, width), dtype=torch.int64, device=proposals.device)
    chunk = max(1, CHUNK_ELEMENTS // (height * width))
    for start in range(0, len(maps), chunk):
        upsampled = F.interpolate(maps[start:start + chunk], size=output_size, mode="bilinear",
                                  align_corners=False)[:, 0]
        value, index = upsampled.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        labels = torch.where(better, index + start, labels)
    _, compact = torch.unique(labels, sorted=True, return_inverse=True)
    return compact
