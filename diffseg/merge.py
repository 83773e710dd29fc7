"""Iterative attention merging: from anchor points to object proposals by symmetric KL distance."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Probabilities are clamped to this before `log`, so empty key cells do not give -inf.
EPS = 1e-10


def anchor_grid(height: int, width: int, num_points: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat indices `y*width + x` of the anchor points on an `height x width` query grid, on `device`.

    The official grid for a 64x64 grid and M points per side has step `s = 63 // (M-1)`, span
    `t = s*(M-1)` and starts at `(63-t)//2` (1, 5, ..., 61 for M = 16). An oblong grid uses the step of
    its longer side on both axes, centered the same way, so anchors stay evenly spaced.
    """
    longest = max(height, width)
    step = max(1, (longest - 1) // (num_points - 1))

    def axis(size: int) -> torch.Tensor:
        count = (size - 1) // step + 1 if size > 1 else 1
        count = min(count, num_points)
        span = step * (count - 1)
        return (size - 1 - span) // 2 + step * torch.arange(count, device=device)

    ys, xs = axis(height), axis(width)
    return (ys[:, None] * width + xs[None, :]).reshape(-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, log_p: torch.Tensor | None = None,
                 log_q: torch.Tensor | None = None) -> torch.Tensor:
    """`D[i, j] = 0.5 * (KL(p_i || q_j) + KL(q_j || p_i))` for rows of `p (m, n)` and `q (k, n)`.

    Computed in fp32 (or wider) with matrix products; `log_p` / `log_q` may be passed when already known.
    Returns `(m, k)`.
    """
    if p.dtype not in (torch.float32, torch.float64) or q.dtype != p.dtype:
        raise ValueError("symmetric_kl needs fp32 or fp64 inputs of one dtype")
    log_p = p.clamp_min(EPS).log_() if log_p is None else log_p
    log_q = q.clamp_min(EPS).log_() if log_q is None else log_q
    self_p = torch.einsum("ij,ij->i", p, log_p)
    self_q = torch.einsum("ij,ij->i", q, log_q)
    cross = p @ log_q.T + (q @ log_p.T).T
    return 0.5 * (self_p[:, None] + self_q[None, :] - cross)


def merge(attention: torch.Tensor, grid: tuple[int, int], num_points: int,
          thresholds: Sequence[float]) -> torch.Tensor:
    """Merge the `(N, N)` aggregated attention of one image into `(K, N)` proposals.

    Pass 0: each anchor becomes the mean of all N maps within `thresholds[0]` of it. Passes 1.. : walk
    the proposals in order, skip one already matched, otherwise emit the mean of every proposal within
    the pass's threshold of it (matched ones included) and mark those matched.

    Args:
        attention: fp32 `(N, N)`, row `y*W + x` the key distribution of query cell (y, x).
        grid: `(H, W)` with `H * W = N`.
        num_points: anchor grid side, see `anchor_grid`.
        thresholds: one threshold per pass.
    """
    return merge_batch([attention], grid, num_points, [thresholds])[0][0]


def merge_batch(attentions: Sequence[torch.Tensor], grid: tuple[int, int], num_points: int,
                threshold_sets: Sequence[Sequence[float]]) -> list[list[torch.Tensor]]:
    """`merge` for the attention of several images of one grid, with each of `threshold_sets` (one threshold per
    pass each, the same number of passes in every set); per image, the proposals of each set.

    The anchors' distances are computed once per image for all sets, and each pass runs on every image and set
    before its grouping step on the host, so on a GPU a batch waits for the device once per pass, not once per
    image, set and pass.
    """
    proposals = [p for attention in attentions
                 for p in _anchor_pass(attention, grid, num_points, [t[0] for t in threshold_sets])]
    sets = [t for _ in attentions for t in threshold_sets]
    for step in range(1, len(threshold_sets[0])):
        close = [symmetric_kl(p, p) < t[step] for p, t in zip(proposals, sets)]
        on_host = [c.cpu() for c in close]
        proposals = [_merge_groups(p, c) for p, c in zip(proposals, on_host)]
    per_image = len(threshold_sets)
    return [proposals[i:i + per_image] for i in range(0, len(proposals), per_image)]


def _anchor_pass(attention: torch.Tensor, grid: tuple[int, int], num_points: int,
                 thresholds: Sequence[float]) -> list[torch.Tensor]:
    """Pass 0 of `merge`, once per threshold: `(A, N)` means of the maps within the threshold of each anchor. The
    distances are computed once; no host synchronization."""
    log_attention = attention.clamp_min(EPS).log_()
    anchors = anchor_grid(*grid, num_points, device=attention.device)
    distance = symmetric_kl(attention[anchors], attention, log_attention[anchors], log_attention)
    del log_attention
    own = torch.arange(len(anchors), device=attention.device)
    means = []
    for threshold in thresholds:  # one product per threshold: a set's means do not depend on the others'
        members = distance < threshold
        # An anchor always belongs to its own group, whatever rounding does to its zero distance.
        members[own, anchors] = True
        members = members.to(attention.dtype)
        means.append((members @ attention) / members.sum(dim=1, keepdim=True))
    return means


def merge_pass(proposals: torch.Tensor, threshold: float) -> torch.Tensor:
    """One later merging pass over `(K, N)` proposals (key distributions): walk them in order; one already
    matched is skipped; otherwise it and every proposal within `threshold` of it (matched ones included) are
    marked matched and replaced by their mean. Returns the `(K', N)` means, K' <= K, in the order emitted."""
    return _merge_groups(proposals, (symmetric_kl(proposals, proposals) < threshold).cpu())


def _merge_groups(proposals: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
    """The means of `merge_pass`'s groups, from the `(K, K)` closeness of the proposals (a CPU bool tensor)."""
    matched = torch.zeros(len(proposals), dtype=torch.bool)
    groups = []
    for i in range(len(proposals)):
        if matched[i]:
            continue
        group = close[i].clone()
        group[i] = True
        matched |= group
        groups.append(group)
    members = torch.stack(groups)
    if proposals.device.type == "cuda":  # pinned, so that the copy does not wait for the device's queue
        members = members.pin_memory()
    members = members.to(device=proposals.device, dtype=proposals.dtype, non_blocking=True)
    return (members @ proposals) / members.sum(dim=1, keepdim=True)
