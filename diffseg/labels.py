"""Label maps from proposals: bilinear upsampling and per-pixel argmax ("non-maximum suppression")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Upsampled proposal values held at once, bounding memory for large output sizes (64 MiB of fp32).
CHUNK_ELEMENTS = 2**24


def label_dtype(count: int) -> torch.dtype:
    """The smallest integer dtype holding labels 0..count-1: uint8 up to 256 labels, int16 up to 32768, else
    int32. Label maps are handed to the CPU in it (an 8-bit map moves and encodes 8x less than int64)."""
    if count <= 256:
        return torch.uint8
    return torch.int16 if count <= 2**15 else torch.int32


def label_map(proposals: torch.Tensor, grid: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel argmax of the proposals upsampled to `output_size`, relabelled 0..K'-1.

    Runs on the proposals' device without waiting for it (no host synchronization).

    Args:
        proposals: `(K, H*W)` maps on the grid `(H, W)`.
        output_size: `(height, width)` of the label map in pixels.

    Returns:
        `(height, width)` labels in `label_dtype(K)`. Labels are consecutive from 0 and keep the proposals'
        order; proposals that win no pixel get no label. Ties go to the earlier proposal.
    """
    height, width = output_size
    count = len(proposals)
    maps = proposals.float().reshape(count, 1, *grid)
    best = torch.full((height, width), float("-inf"), device=proposals.device)
    labels = torch.zeros((height, width), dtype=torch.int64, device=proposals.device)
    chunk = max(1, CHUNK_ELEMENTS // (height * width))
    for start in range(0, count, chunk):
        upsampled = F.interpolate(maps[start:start + chunk], size=output_size, mode="bilinear",
                                  align_corners=False)[:, 0]
        value, index = upsampled.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        labels = torch.where(better, index + start, labels)
    # Compacted through a per-proposal table rather than `unique` (a sort, and a host sync on a GPU).
    wins = torch.zeros(count, dtype=torch.int64, device=labels.device).index_add_(
        0, labels.view(-1), torch.ones(1, dtype=torch.int64, device=labels.device).expand(labels.numel()))
    compact = (wins > 0).cumsum(0).sub_(1).to(label_dtype(count))
    return compact[labels]
