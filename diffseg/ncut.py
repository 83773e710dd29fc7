"""DiffCut's recursive normalized cut of a grid of feature tokens (Couairon et al., NeurIPS 2024).

The labels are those of the official `recursive_ncut` followed by `assemble_clusters`, for any h x w grid. The
official bookkeeping (a "painting" of explored tokens that zeroes affinities between painted pairs, and a kept
set of tokens whose masked affinity row has no exact zero) reduces to a region per call:

- the root region is every token;
- a cut of region R into sides S (Fiedler value above the threshold) and R \\ S explores S first, then R \\ S,
  and both children drop every token whose row of the unmasked affinity contains an exact zero (at least the
  pair that attained the global minimum before min-max normalization, and any value the power flushed to 0).
  Those tokens keep the labels their last cut gave them: they join the low side of every later cut of their
  region, as in the official code.

The threshold tau only decides whether a region's best cut is accepted: the cut itself, and so the children's
regions, do not depend on it. One recursion at the largest threshold therefore gives every smaller one by pruning
(`CutTree`): a cut is kept at tau' when its NCut value and those of all its ancestors are below tau'.

Degenerate cases, where the official code crashes or misbehaves, are settled here as follows: a candidate
threshold whose NCut value is NaN (one side empty, or its degree rounds to the whole) or that leaves a side empty
(its value is then rounding noise, possibly below tau, and the official recursion would repeat the region
forever) is not a cut; a failed `eigh` means no cut.

The official recursion's work is unbounded: features without structure (noise) are cut down to single tokens, one
peeled off the rest at a time, each cut an eigendecomposition of nearly the whole grid (at 32 x 32, a thousand of
them, 15 s on a 2-core CPU). Here it stops once a bound is spent (`MAX_WORK`), keeping the cuts made so far, and
says so (`CutTree.complete`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

CANDIDATES = 100
"""Thresholds tried along the Fiedler vector (official value)."""

SPAN = 0.99
"""The thresholds run from SPAN * min to SPAN * max of the Fiedler vector (official value)."""

CUDA_EIGH_MIN_SIZE = 256
"""Smallest region whose `eigh` runs on the GPU; a smaller CUDA matrix is decomposed by LAPACK on the CPU and only
its one needed eigenvector copied back. cuSOLVER's dense `syevd` has a fixed cost per call (several kernels and
host round trips) that dominates at small sizes, while LAPACK's grows as n^3 from a fraction of a millisecond:
0.2, 0.5, 2.2 and 12 ms at n = 64, 128, 256 and 512 on the 2-core development VM. Most regions of a recursion are
small, so this matters. 256 is a default for the GPU check to confirm: `benchmarks/bench_ncut.py --device cuda`
prints, by size, `eigh` on the CPU, on the GPU, and through the CPU from the GPU (copies included)."""

MAX_WORK = 16
"""The recursion's budget per image, in eigendecompositions of the whole grid: the regions it decomposes may sum to
at most this many times N^3 in n^3 (n a region's tokens, N the grid's), what `eigh` costs. A recursion that would
exceed it stops before that region, and the regions still waiting stay whole. The cuts of the planted families of
`benchmarks/bench_cuts.py` cost 1.4 to 2.4; peeling k small objects one at a time off a background costs about k + 1;
features of pure noise at 32 x 32, peeled down to single tokens, cost 162 (a thousand cuts). So an image costs at
most about 8 times a typical one (at 64 x 64 on a 2-core CPU, where one decomposition of the grid takes 5 s, 82 s
against 6 to 13 s; see benchmarks/README.md). The bound depends on no clock, so an image gets the same labels on
every machine."""

WORD_BITS = 62
"""Cut memberships packed per int64 sort key in `assemble` (non-negative, so that keys compare as bit strings)."""


def affinity_matrix(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """Cosine similarity of the `(N, C)` tokens, min-max normalized over the whole matrix, to the power
    `alpha`; `(N, N)` fp32 on the tokens' device."""
    tokens = F.normalize(features.float(), p=2, dim=1)
    affinity = tokens @ tokens.T
    affinity = (affinity - affinity.min()) / (affinity.max() - affinity.min())
    return affinity**alpha


def second_eigenvector(matrix: torch.Tensor) -> torch.Tensor:
    """The eigenvector `(n,)` of the second smallest eigenvalue of the symmetric `(n, n)` matrix, on its device;
    through the CPU for a CUDA matrix smaller than `CUDA_EIGH_MIN_SIZE`. Raises `torch.linalg.LinAlgError`."""
    if matrix.is_cuda and len(matrix) < CUDA_EIGH_MIN_SIZE:
        return torch.linalg.eigh(matrix.cpu())[1][:, 1].to(matrix.device)
    return torch.linalg.eigh(matrix)[1][:, 1]


def fiedler_vector(laplacian: torch.Tensor, degree: torch.Tensor) -> torch.Tensor | None:
    """Generalized Fiedler vector D^-1/2 u of the `(n, n)` graph Laplacian D - A with degrees `degree (n,)`, u the
    eigenvector of the second smallest eigenvalue of D^-1/2 (D - A) D^-1/2; signed so that its entry of largest
    magnitude (the first one on ties) is positive. `None` when `eigh` fails."""
    # Scaling by 1 / sqrt(d) on each side rounds exactly as the official products with a diagonal matrix.
    scale = 1 / degree.sqrt()
    try:
        vector = scale * second_eigenvector(scale[:, None] * laplacian * scale[None, :])
    except torch.linalg.LinAlgError:
        return None
    # A one-element index tensor, not a 0-dim one, which indexing would read back to the host.
    return vector * torch.sign(vector[torch.argmax(vector.abs(), keepdim=True)])


def ncut_values(sides: torch.Tensor, laplacian: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """Shi-Malik NCut value `(y^T L y) / (y^T D y)` of each candidate bipartition, a column of `sides (n, M)`
    (bool, True on one side), for the `(n, n)` Laplacian L = D - A and the degrees `degree (n,)`.

    y = (1 + x) - b (1 - x), x = +-1 the side, b = k / (1 - k) and k the share of the degree on the True side.
    Returns `(M,)`; +inf where the value is undefined (an empty side).
    """
    x = 2 * sides.float() - 1
    share = (degree @ sides.float()) / degree.sum()
    b = share / (1 - share)
    # Kept literal: b = inf (share rounded to 1) must make y NaN, as in the official formula.
    y = (1 + x) - b * (1 - x)
    values = (y * (laplacian @ y)).sum(dim=0) / (y * y * degree[:, None]).sum(dim=0)
    # With every token on the True side, a share that rounds just below 1 leaves y = 2 and the value rounding
    # noise near 0, not NaN: that must not pass for a cut.
    empty = sides.all(dim=0) | ~sides.any(dim=0)
    return torch.where(values.isnan() | empty, torch.inf, values)


def best_cut(affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The official bipartition of an `(n, n)` affinity (n >= 2): the side above the best of `CANDIDATES`
    thresholds on the Fiedler vector, a bool `(n,)`, and its NCut value, an fp32 0-dim tensor (+inf when no
    threshold gives a cut); `None` when `eigh` fails."""
    degree = affinity.sum(dim=1)
    laplacian = torch.diag(degree) - affinity
    vector = fiedler_vector(laplacian, degree)
    if vector is None:
        return None
    # The official thresholds are torch.linspace's rounding, which differs between its vectorized CPU kernel and
    # its CUDA kernel and which no tensor expression reproduces (low + (high - low) * linspace(0, 1) differs in
    # nearly every case): so the ends go to the host, one synchronization per region.
    low, high = (torch.stack([vector.min(), vector.max()]) * SPAN).tolist()
    thresholds = torch.linspace(low, high, CANDIDATES, device=vector.device)
    sides = vector[:, None] > thresholds[None, :]
    values = ncut_values(sides, laplacian, degree)
    best = torch.argmin(values, keepdim=True)
    return sides[:, best].squeeze(1), values[best].squeeze(0)


@dataclass
class CutTree:
    """The accepted cuts of one recursion at threshold `tau`, in the official (pre-order) order: each cut is a
    bool `(size,)` that is True on the high side (and False outside the region that was cut), with its NCut value
    (a float, exactly the fp32 one) and the position of its parent cut (-1 for the root's)."""

    tau: float
    size: int
    device: torch.device
    cuts: list[torch.Tensor] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    complete: bool = True
    """False when the recursion stopped at its work bound (`MAX_WORK`) with regions left uncut. Pruned (`kept`), such
    a tree gives a smaller threshold the segments found so far, not what a recursion of its own would reach (which
    spends the bound elsewhere)."""

    def kept(self, tau: float) -> list[torch.Tensor]:
        """The cuts a recursion at `tau` (at most the tree's) accepts, in its order: those whose value and all of
        whose ancestors' values are below `tau`."""
        limit = _float32(tau)
        if limit > _float32(self.tau):
            raise ValueError(f"the tree was cut at tau = {self.tau}, which cannot give tau = {tau}")
        keep: list[bool] = []
        for value, parent in zip(self.values, self.parents):
            keep.append(value < limit and (parent < 0 or keep[parent]))
        return [cut for cut, kept in zip(self.cuts, keep) if kept]

    def labels(self, tau: float) -> torch.Tensor:
        """int64 labels `(size,)` 0..K-1 of the recursion at `tau` (at most the tree's)."""
        return assemble(self.kept(tau), self.size, self.device)


def recursive_cuts(affinity: torch.Tensor, tau: float, max_work: float = MAX_WORK) -> CutTree:
    """Every accepted cut of the recursion at `tau` over an `(N, N)` affinity (see `CutTree`), within `max_work`
    eigendecompositions of the whole affinity (see `MAX_WORK`).

    One host synchronization per region (besides `eigh`'s own and `best_cut`'s): its NCut value and the sizes of
    its children, which the recursion needs to go on; regions are index tensors, so nothing else reads back.
    """
    size = len(affinity)
    budget = max_work * float(size) ** 3
    # The official kept set (rows of the masked affinity without a zero) excludes these below the root.
    live = ~(affinity == 0).any(dim=1)
    limit = _float32(tau)
    tree = CutTree(tau, size, affinity.device)
    # A stack of (ascending token indices of a region, position of its parent cut).
    pending = [(torch.arange(size, device=affinity.device), -1)]
    while pending:
        index, parent = pending.pop()
        if len(index) < 2:
            continue
        budget -= float(len(index)) ** 3
        if budget < 0:
            tree.complete = False
            break
        found = best_cut(affinity[index[:, None], index[None, :]])
        if found is None:
            continue
        side, value = found
        low, high = ~side & live[index], side & live[index]
        value, low_size, high_size = torch.stack([value.double(), low.sum().double(), high.sum().double()]).tolist()
        if not value < limit:
            continue
        cut = torch.zeros(size, dtype=torch.bool, device=affinity.device)
        cut[index] = side
        tree.cuts.append(cut)
        tree.values.append(value)
        tree.parents.append(parent)
        # The high side, pushed last, is explored (with all its descendants) first.
        for child, count in ((low, low_size), (high, high_size)):
            pending.append((index[torch.nonzero_static(child, size=int(count)).squeeze(1)], len(tree.cuts) - 1))
    return tree


def assemble(cuts: Sequence[torch.Tensor], size: int, device: torch.device | str) -> torch.Tensor:
    """Labels `(size,)` int64 0..K-1 from bool `(size,)` cuts: the rank of each token's official code
    sum_i m_i [token in cut i], m_0 = 1, m_i = 1 + max code after i cuts. Each m_i exceeds every earlier code, so
    codes compare as the cut memberships read from the last cut to the first; ranking those bit strings is exact
    for any number of cuts, where the official float32 codes lose integers past 2^24. Without host
    synchronization: the bit strings are packed into int64 words and sorted, least significant word first, with
    stable sorts."""
    if not cuts:
        return torch.zeros(size, dtype=torch.int64, device=device)
    bits = torch.stack(list(cuts)[::-1], dim=1).long()  # (size, K), the last cut first
    bits = F.pad(bits, (0, -len(cuts) % WORD_BITS)).view(size, -1, WORD_BITS)
    keys = (bits * 2 ** torch.arange(WORD_BITS - 1, -1, -1, device=device)).sum(dim=2)  # (size, words)
    order = torch.arange(size, device=device)
    for word in reversed(keys.unbind(dim=1)):
        order = order[torch.argsort(word[order], stable=True)]
    ordered = keys[order]
    first = torch.ones(size, dtype=torch.int64, device=device)
    first[1:] = (ordered[1:] != ordered[:-1]).any(dim=1)
    return torch.empty_like(order).scatter_(0, order, first.cumsum(0) - 1)


class Cut(NamedTuple):
    """The labels of a cut at one threshold (this recursion's, or kway's descent), and whether it ended within its
    work bound."""

    labels: torch.Tensor
    """int64 labels 0..K-1, shaped as the caller says."""
    complete: bool
    """False: it stopped at its bound (`MAX_WORK`; kway's also `kway.MAX_STEPS`), with the segments found so far."""


def cuts_at(affinity: torch.Tensor, taus: Sequence[float], max_work: float = MAX_WORK) -> list[Cut]:
    """The recursion over the `(N, N)` affinity at each of `taus`, labels `(N,)`: one recursion at the largest,
    pruned for the others (`CutTree`), the same labels as separate recursions for the eigendecompositions of one.
    When that one stopped at its work bound, every threshold gets the segments it found so far (so the work stays
    that of one bounded recursion), marked incomplete."""
    tree = recursive_cuts(affinity, max(taus), max_work)
    return [Cut(tree.labels(tau), tree.complete) for tau in taus]


def segment_tokens(features: torch.Tensor, tau: float = 0.5, alpha: float = 10.0) -> torch.Tensor:
    """DiffCut's recursive normalized cut of the `(h, w, C)` features (any float dtype and device, computed in
    fp32 on that device): int64 labels `(h, w)`, 0..K-1, on the same device.

    A cut is accepted when its NCut value is below `tau` (larger: more segments); `alpha` is the affinity
    exponent. The official pipeline L2-normalizes the features before `recursive_ncut` normalizes them again;
    pass normalized features to round as it does. The work is bounded (`MAX_WORK`).
    """
    return segment_tokens_multi(features, [tau], alpha)[0].labels


def segment_tokens_multi(features: torch.Tensor, taus: Sequence[float], alpha: float = 10.0) -> list[Cut]:
    """`segment_tokens` at each of `taus` (see `cuts_at`), labels `(h, w)`, each with whether its recursion ended
    within the work bound."""
    h, w, channels = features.shape
    cuts = cuts_at(affinity_matrix(features.reshape(h * w, channels), alpha), taus)
    return [Cut(cut.labels.reshape(h, w), cut.complete) for cut in cuts]


def _float32(tau: float) -> float:
    """`tau` rounded to fp32. A value is accepted when below this, as when an fp32 tensor is compared with `tau`
    (the official code compares its Python float in double: the two differ only for a value of exactly fp32(tau)
    where that rounds below tau, e.g. 0.45 but not 0.5)."""
    return torch.tensor(tau, dtype=torch.float32).item()
