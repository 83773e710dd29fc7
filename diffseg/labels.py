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
    winners, _, _ = _argmax(proposals, grid, output_size, runner_up=False)
    return compact(winners, len(proposals))


def label_map_with_margins(proposals: torch.Tensor, grid: tuple[int, int], output_size: tuple[int, int]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`label_map`; how clearly each pixel's label wins it: the fp32 `(height, width)` margin `(v1 - v2) / v1` in
    [0, 1], v1 and v2 the largest and second-largest upsampled proposal values at the pixel (1 where there is one
    proposal or v2 <= 0; 0 where v1 = v2 or v1 <= 0); and the int64 `(K,)` label of each proposal (-1 for one
    that wins no pixel)."""
    winners, best, runner_up = _argmax(proposals, grid, output_size, runner_up=True)
    margin = torch.where(best > 0, (best - runner_up.clamp_min(0)) / best, torch.zeros_like(best))
    table = proposal_table(winners, len(proposals))
    return table.to(label_dtype(len(proposals)))[winners], margin.clamp_(0, 1), table


def winning_proposals(proposals: torch.Tensor, grid: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """int64 `(height, width)`: the index of the proposal that wins each pixel (`label_map` before relabelling)."""
    return _argmax(proposals, grid, output_size, runner_up=False)[0]


def _argmax(proposals: torch.Tensor, grid: tuple[int, int], output_size: tuple[int, int], runner_up: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per pixel of the upsampled proposals: the winning proposal's index (int64; the earlier one on ties), its
    value, and with `runner_up` the second-largest value (-inf with one proposal). In chunks of proposals."""
    height, width = output_size
    count, inf = len(proposals), float("inf")
    maps = proposals.float().reshape(count, 1, *grid)
    best = torch.full((height, width), -inf, device=proposals.device)
    second = torch.full_like(best, -inf) if runner_up else None
    winners = torch.zeros((height, width), dtype=torch.int64, device=proposals.device)
    chunk = max(1, CHUNK_ELEMENTS // (height * width))
    for start in range(0, count, chunk):
        upsampled = F.interpolate(maps[start:start + chunk], size=output_size, mode="bilinear",
                                  align_corners=False)[:, 0]
        value, index = upsampled.max(dim=0)
        if runner_up:
            # The chunk's runner-up: its largest value once the winner's is masked (cheaper than `topk`).
            chunk_second = upsampled.scatter_(0, index.unsqueeze(0), -inf).amax(dim=0)
            second = torch.maximum(torch.minimum(best, value), torch.maximum(second, chunk_second))
        better = value > best
        best = torch.where(better, value, best)
        winners = torch.where(better, index + start, winners)
    return winners, best, second


def compact(winners: torch.Tensor, count: int) -> torch.Tensor:
    """`winners` (proposal indices) renumbered 0..K'-1 over the proposals that win a pixel, in `label_dtype`."""
    return proposal_table(winners, count).to(label_dtype(count))[winners]


def proposal_table(winners: torch.Tensor, count: int) -> torch.Tensor:
    """int64 `(count,)`: the label of each proposal, numbered in order over those that win a pixel of `winners`,
    -1 for the others. Through a per-proposal count rather than `unique` (a sort, and a host sync on a GPU)."""
    wins = torch.zeros(count, dtype=torch.int64, device=winners.device).index_add_(
        0, winners.view(-1), torch.ones(1, dtype=torch.int64, device=winners.device).expand(winners.numel()))
    won = wins > 0
    return torch.where(won, won.cumsum(0) - 1, -1)
