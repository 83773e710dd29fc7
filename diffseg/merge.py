"""Iterative attention merging: from anchor points to object proposals by symmetric KL distance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
        proposals = _merge_step(proposals, [t[step] for t in sets])
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
    return _merge_step([proposals], [threshold])[0]


def _merge_step(proposals: Sequence[torch.Tensor], thresholds: Sequence[float]) -> list[torch.Tensor]:
    """`merge_pass` of each `(K_s, N)` proposal set with its threshold. The walks are sequential, so they run on
    the host in numpy; all sets' closeness comes down in one copy and their groups go up in one."""
    close = _to_host([symmetric_kl(p, p) < t for p, t in zip(proposals, thresholds)])
    return _group_means(proposals, [_walk(c) for c in close])


def _to_host(close: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The `(K_s, K_s)` bool matrices as numpy arrays, copied in one transfer (one wait for a GPU)."""
    flat = torch.cat([c.reshape(-1) for c in close]).cpu().numpy()
    parts = np.split(flat, np.cumsum([c.numel() for c in close])[:-1])
    return [part.reshape(c.shape) for part, c in zip(parts, close)]


def _walk(close: np.ndarray) -> np.ndarray:
    """The groups of `merge_pass`'s walk, from the `(K, K)` bool closeness of the proposals (row i: which are within
    the threshold of proposal i): `(G, K)` bool, one row per group in the order emitted."""
    matched = np.zeros(len(close), dtype=bool)
    leaders = []
    for i in range(len(close)):
        if not matched[i]:
            leaders.append(i)
            # The leader's own mark is left out: the walk never comes back to it.
            matched |= close[i]
    members = close[leaders]
    # A proposal always belongs to its own group, whatever rounding does to its zero distance.
    members[np.arange(len(leaders)), leaders] = True
    return members


def _group_means(proposals: Sequence[torch.Tensor], members: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """`(G_s, N)` means of each set's groups: the `(G_s, K_s)` bool `members` of all sets go to the proposals'
    device in one copy, then `members @ proposals / counts` per set."""
    flat = torch.from_numpy(np.concatenate([m.reshape(-1) for m in members]))
    device = proposals[0].device
    if device.type == "cuda":  # pinned, so that the copy does not wait for the device's queue
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    means = []
    for p, m, part in zip(proposals, members, flat.split([m.size for m in members])):
        weights = part.view(m.shape).to(p.dtype)
        means.append((weights @ p) / weights.sum(dim=1, keepdim=True))
    return means
