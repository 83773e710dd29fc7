"""A K-way normalized cut of token grids, minimized directly on one-hot assignments (after Falcon, "Fast Proximal
Linearization of Normalized Cuts for Unsupervised Image Segmentation", ICLR 2026).

The objective of a partition of the tokens into A_1..A_K, for an affinity W with degrees d = W 1, is

    NCut = sum_k cut(A_k, V \\ A_k) / vol(A_k) = sum_k (1 - assoc_k / vol_k),

with X the `(N, K)` one-hot assignment, assoc_k = x_k^T W x_k and vol_k = d^T x_k. Falcon linearizes it: the
gradient gives every token a score per segment, s_ik = assoc_k d_i / vol_k^2 - 2 (W x_k)_i / vol_k, and a
proximal step with one one-hot row per token solves, row by row, argmin_k s_ik - lambda [i in A_k] (lambda, the
inertia, keeps tokens where they are). Here the score is the exact change of the objective when token i alone
moves to segment k, which the same sums give in closed form (`_gains`) and which the gradient approximates to
first order; it differs where the linearization is poor, for small segments, whose emptying it sees (a segment of
one token costs about 1, the linear score hides that). A token moves when its best change beats staying by more
than lambda. A step, every such move at once, is taken only if the exact objective decreases; otherwise lambda
rises to the median gain of the rejected moves, so that the next try moves about half as many tokens
(backtracking); after a taken step it halves. The value therefore never increases, and the descent stops when
not even the best single move is taken, or after `MAX_STEPS` tries.

K comes from the data through DiffCut's own rule at the same `tau` (`ncut`): its recursion runs on the tokens
average-pooled to at most `COARSE_SIDE` a side, and its segments, repeated back onto the full grid, start the
descent, which then reassigns every token at full resolution, the images of a batch together (one `(B, N, N)`
product per step, one host synchronization per step). Segments can only empty out, never appear: K is at most
the recursion's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .ncut import Cut, affinity_matrix, cuts_at

MAX_STEPS = 200
"""Tried steps per batch (taken or backtracked): a bound on the work per image, reached only by a descent that
keeps finding gains; the partition reached so far is returned, marked unsettled (`Descent.settled`)."""
COARSE_SIDE = 32
"""Most tokens along a side of the grid the recursion that picks K and the starting partition runs on: larger
grids are average-pooled by the smallest integer factor that brings them there (64 x 64 by 2: a quarter of the
tokens, about 1/64 of the eigendecomposition work); at 32 x 32 (DiffCut at 1024 px) it runs on the tokens
themselves, where its eigendecompositions cost little."""


def ncut_value(affinity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The K-way NCut value `sum_k cut(A_k, V \\ A_k) / vol(A_k)` of `labels` `(..., N)` (int64, any values) on
    `affinity` `(..., N, N)`; shape `(...)`, in float64 (so that two methods' values compare without fp32
    rounding)."""
    affinity = affinity.double()
    onehot = F.one_hot(_dense(labels)).double()
    return _objective(onehot, affinity @ onehot, affinity.sum(dim=-1))


class Descent(NamedTuple):
    """What `descend` reached."""

    labels: torch.Tensor
    """`(B, N)` int64 labels 0..K'-1 per image (K' <= K: emptied segments are dropped, the others keep their
    order)."""
    steps: int
    """Steps tried, for the whole batch."""
    settled: torch.Tensor
    """`(B,)` bool: the image's descent ended on its own (no move left lowers the value), not at `max_steps`."""


def descend(affinity: torch.Tensor, labels: torch.Tensor, max_steps: int = MAX_STEPS) -> Descent:
    """Monotone proximal descent of the K-way NCut from `labels`.

    Args:
        affinity: `(B, N, N)` symmetric non-negative fp32 affinities, one per image.
        labels: `(B, N)` int64 starting segments, 0..K-1 per image (K may differ between images).
        max_steps: tried steps at most (see `MAX_STEPS`).
    """
    degree = affinity.sum(dim=-1)  # (B, N)
    self_affinity = affinity.diagonal(dim1=-2, dim2=-1)
    onehot = F.one_hot(_dense(labels)).to(affinity.dtype)  # (B, N, K)
    product = affinity @ onehot
    value = _objective(onehot, product, degree)
    inertia = torch.zeros_like(value)
    done = torch.zeros_like(value, dtype=torch.bool)
    steps = 0
    while steps < max_steps and not bool(done.all()):
        steps += 1
        gain, choice = _gains(onehot, product, degree, self_affinity)
        move = (gain > inertia[:, None]) & ~done[:, None]
        moved = move.sum(dim=1)
        proposal = torch.where(move[..., None], F.one_hot(choice, onehot.shape[-1]).to(onehot.dtype), onehot)
        proposed_product = affinity @ proposal
        proposed = _objective(proposal, proposed_product, degree)
        taken = (moved > 0) & (proposed < value)
        onehot = torch.where(taken[:, None, None], proposal, onehot)
        product = torch.where(taken[:, None, None], proposed_product, product)
        value = torch.where(taken, proposed, value)
        # A rejected try raises the inertia to the median gain of its moves; one rejected single move ends it.
        ranked = torch.where(move, gain, -torch.inf).sort(dim=1, descending=True).values
        median = ranked.gather(1, (moved // 2).clamp(max=ranked.shape[1] - 1)[:, None]).squeeze(1)
        done |= (moved == 0) & (inertia == 0) | ~taken & (moved == 1)
        inertia = torch.where(taken, inertia / 2, torch.where(moved > 0, median, torch.zeros_like(inertia)))
    return Descent(torch.stack([_dense(row) for row in onehot.argmax(dim=-1)]), steps, done)


def segment_tokens(features: torch.Tensor, tau: float = 0.5, alpha: float = 10.0,
                   max_steps: int = MAX_STEPS) -> torch.Tensor:
    """K-way NCut segments of the `(B, h, w, C)` features (any float dtype and device, computed in fp32 there):
    int64 labels `(B, h, w)`, 0..K-1 per image. `tau` and `alpha` are DiffCut's (`ncut.segment_tokens`): `tau`
    sets K through the recursion that starts the descent, `alpha` is the affinity exponent, the same affinity for
    both. The work per image is bounded (the recursion's `ncut.MAX_WORK`, the descent's `max_steps`)."""
    return torch.stack([cut.labels for cut, in segment_tokens_multi(list(features), [tau], alpha, max_steps)])


def segment_tokens_multi(features: Sequence[torch.Tensor], taus: Sequence[float], alpha: float = 10.0,
                         max_steps: int = MAX_STEPS) -> list[list[Cut]]:
    """`segment_tokens` of each `(h, w, C)` image at each of `taus`: per image and tau, int64 `(h, w)` labels, and
    whether both the recursion that started them and the descent ended within their bounds. One recursion per
    image at the largest tau gives every start (`ncut.cuts_at`); the images of one grid size descend together, one
    batch per tau."""
    results: list[list[Cut]] = [[] for _ in features]
    by_grid: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(features):
        by_grid.setdefault(tuple(image.shape), []).append(index)
    for (h, w, channels), indices in by_grid.items():
        affinity = torch.stack([affinity_matrix(features[index].reshape(h * w, channels), alpha)
                                for index in indices])
        starts = [_starts(features[index], taus, alpha, matrix) for index, matrix in zip(indices, affinity)]
        for step in range(len(taus)):
            begin = torch.stack([image[step].labels.reshape(h * w) for image in starts])
            reached = descend(affinity, begin, max_steps)
            for index, start, labels, settled in zip(indices, starts, reached.labels, reached.settled.tolist()):
                results[index].append(Cut(labels.reshape(h, w), start[step].complete and settled))
    return results


def _starts(features: torch.Tensor, taus: Sequence[float], alpha: float, affinity: torch.Tensor) -> list[Cut]:
    """DiffCut's segments at each of `taus` of the `(h, w, C)` features average-pooled to at most `COARSE_SIDE`
    tokens a side (ceil mode, so that any grid pools), repeated back to `(h, w)` int64, each with whether its
    recursion ended within its bound; `affinity` is the tokens' own, the one the recursion uses when there is
    nothing to pool.

    DiffCut sets apart, each in a segment of its own, the tokens whose affinity row holds an exact zero (the most
    dissimilar pair of the image, and any value the power flushed to 0). Unpooled, such a token is a fair seed
    of a region the cuts missed, and the descent grows it there. A pooled one stands for a block of tokens that
    may straddle regions, and grown alone, it takes from its neighbours; several of them, mutually affine, are
    often the pieces of one small region pooling blurred (`_settle_alone`). Both rules were chosen on the planted
    Voronoi cells of `benchmarks/bench_cuts.py`, where such tokens occur."""
    h, w, channels = features.shape
    pool = -(-max(h, w) // COARSE_SIDE)
    pooled = F.avg_pool2d(features.float().permute(2, 0, 1)[None], pool, ceil_mode=True)[0].permute(1, 2, 0)
    ph, pw = pooled.shape[:2]
    if pool > 1:
        affinity = affinity_matrix(pooled.reshape(ph * pw, channels), alpha)
    starts = []
    for coarse, complete in cuts_at(affinity, taus):
        if pool > 1:
            coarse = _settle_alone(coarse, affinity)
        starts.append(Cut(coarse.reshape(ph, pw).repeat_interleave(pool, 0).repeat_interleave(pool, 1)[:h, :w],
                          complete))
    return starts


def _settle_alone(labels: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """`labels` `(N,)` of pooled tokens where those alone in their segment are settled: tokens alone that are more
    affine to one another than each is, on average, to any segment of several tokens are linked, and each group of
    linked tokens becomes one segment (a small region pooling cut into pieces); a token linked to none joins the
    segment of several it is most affine to on average. Unchanged when none or all are alone."""
    sizes = torch.bincount(labels)
    alone = sizes[labels] == 1
    if not alone.any() or alone.all():
        return labels
    kept = F.one_hot(labels).to(affinity.dtype) * (sizes > 1)
    mean_affinity = (affinity[alone] @ kept) / kept.sum(dim=0).clamp(min=1)  # (A, K)
    best = mean_affinity.max(dim=1).values
    mutual = affinity[alone][:, alone].fill_diagonal_(0)
    group = _components((mutual > best[:, None]) & (mutual > best[None, :]))
    grouped = torch.bincount(group)[group] > 1
    settled_alone = mean_affinity.argmax(dim=1)
    settled_alone[grouped] = int(labels.max()) + 1 + torch.unique(group[grouped], return_inverse=True)[1]
    settled = labels.clone()
    settled[alone] = settled_alone
    return settled


def _components(link: torch.Tensor) -> torch.Tensor:
    """The connected components of the symmetric bool `(A, A)` links: per node, the smallest node of its component
    (label propagation; A is the handful of tokens a cut left alone)."""
    group = torch.arange(len(link), device=link.device)
    while True:
        merged = torch.where(link, group[None, :], len(link)).min(dim=1).values.minimum(group)
        if torch.equal(merged, group):
            return group
        group = merged


def _gains(onehot: torch.Tensor, product: torch.Tensor, degree: torch.Tensor, self_affinity: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token `(B, N)`: by how much the objective falls when it alone moves to its best other segment (<= 0:
    no move helps), and that segment. Exact, from the sums the step keeps: moving token i from a to b changes
    assoc_a by W_ii - 2 (W x_a)_i, vol_a by -d_i, assoc_b by W_ii + 2 (W x_b)_i and vol_b by d_i."""
    volume = torch.einsum("bn,bnk->bk", degree, onehot)[:, None, :]  # (B, 1, K)
    association = (onehot * product).sum(dim=1)[:, None, :]
    own = onehot.bool()
    d, w = degree[..., None], self_affinity[..., None]  # (B, N, 1)
    leave = _term(association + w - 2 * product, volume - d) - _term(association, volume)
    join = _term(association + w + 2 * product, volume + d) - _term(association, volume)
    # The change of leaving its own segment, for every token; then the other segments it could join.
    leave_own = (leave * onehot).sum(dim=-1, keepdim=True)
    change = torch.where(own | (volume == 0), torch.inf, leave_own + join)
    best, choice = change.min(dim=-1)
    return -best, choice


def _term(association: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """A segment's share `1 - assoc / vol` of the objective; 0 for an empty segment (volume 0, up to rounding)."""
    empty = volume <= 0
    return torch.where(empty, 0, 1 - association / torch.where(empty, torch.ones_like(volume), volume))


def _objective(onehot: torch.Tensor, product: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """`sum_k (1 - assoc_k / vol_k)` over the non-empty segments of each `(..., N, K)` assignment, `(...)`."""
    volume = torch.einsum("...n,...nk->...k", degree, onehot)
    association = (onehot * product).sum(dim=-2)
    live = volume > 0
    return torch.where(live, 1 - association / torch.where(live, volume, torch.ones_like(volume)), 0).sum(dim=-1)


def _dense(labels: torch.Tensor) -> torch.Tensor:
    """`labels` renumbered 0..K-1 in the order of their values (int64, same shape)."""
    return torch.unique(labels, return_inverse=True)[1]

