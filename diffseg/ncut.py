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

Degenerate cases, where the official code crashes or misbehaves, are settled here as follows: a candidate
threshold whose NCut value is NaN (one side empty, or its degree rounds to the whole) is not a cut; a failed
`eigh` means no cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CANDIDATES = 100
"""Thresholds tried along the Fiedler vector (official value)."""

SPAN = 0.99
"""The thresholds run from SPAN * min to SPAN * max of the Fiedler vector (official value)."""


def affinity_matrix(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """Cosine similarity of the `(N, C)` tokens, min-max normalized over the whole matrix, to the power
    `alpha`; `(N, N)` fp32 on the tokens' device."""
    tokens = F.normalize(features.float(), p=2, dim=1)
    affinity = tokens @ tokens.T
    affinity = (affinity - affinity.min()) / (affinity.max() - affinity.min())
    return affinity**alpha


def fiedler_vector(laplacian: torch.Tensor, degree: torch.Tensor) -> torch.Tensor | None:
    """Generalized Fiedler vector D^-1/2 u of the `(n, n)` graph Laplacian D - A with degrees `degree (n,)`, u the
    eigenvector of the second smallest eigenvalue of D^-1/2 (D - A) D^-1/2; signed so that its entry of largest
    magnitude (the first one on ties) is positive. `None` when `eigh` fails."""
    # Scaling by 1 / sqrt(d) on each side rounds exactly as the official products with a diagonal matrix.
    scale = 1 / degree.sqrt()
    try:
        _, vectors = torch.linalg.eigh(scale[:, None] * laplacian * scale[None, :])
    except torch.linalg.LinAlgError:
        return None
    vector = scale * vectors[:, 1]
    return vector * torch.sign(vector[torch.argmax(vector.abs())])


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
    return torch.where(values.isnan(), torch.inf, values)


def best_cut(affinity: torch.Tensor, tau: float) -> torch.Tensor | None:
    """The official bipartition of an `(n, n)` affinity (n >= 2): the side above the best of `CANDIDATES`
    thresholds on the Fiedler vector, a bool `(n,)`, if its NCut value is below `tau`; else `None`."""
    degree = affinity.sum(dim=1)
    laplacian = torch.diag(degree) - affinity
    vector = fiedler_vector(laplacian, degree)
    if vector is None:
        return None
    low, high = (torch.stack([vector.min(), vector.max()]) * SPAN).tolist()
    thresholds = torch.linspace(low, high, CANDIDATES, device=vector.device)
    sides = vector[:, None] > thresholds[None, :]
    values = ncut_values(sides, laplacian, degree)
    best = torch.argmin(values)
    return sides[:, best] if bool(values[best] < tau) else None


def recursive_cuts(affinity: torch.Tensor, tau: float) -> list[torch.Tensor]:
    """Every accepted cut of the recursion over an `(N, N)` affinity, in the official (pre-order) order, each a
    bool `(N,)` that is True on the high side of the cut (and False outside the region that was cut)."""
    # The official kept set (rows of the masked affinity without a zero) excludes these below the root.
    frozen = (affinity == 0).any(dim=1)
    cuts: list[torch.Tensor] = []
    pending = [torch.ones(len(affinity), dtype=torch.bool, device=affinity.device)]
    while pending:
        region = pending.pop()
        index = region.nonzero().squeeze(1)
        if len(index) < 2:
            continue
        side = best_cut(affinity[index[:, None], index[None, :]], tau)
        if side is None:
            continue
        cut = torch.zeros_like(region)
        cut[index] = side
        cuts.append(cut)
        # A stack: the high side, pushed last, is explored (with all its descendants) first.
        pending.append(region & ~cut & ~frozen)
        pending.append(cut & ~frozen)
    return cuts


def assemble(cuts: list[torch.Tensor], size: int, device: torch.device | str) -> torch.Tensor:
    """Labels `(size,)` int64 0..K-1 from bool `(size,)` cuts: the rank of each token's official code
    sum_i m_i [token in cut i], m_0 = 1, m_i = 1 + max code after i cuts. Each m_i exceeds every earlier code, so
    codes compare as the cut memberships read from the last cut to the first; ranking them that way is exact for
    any number of cuts, where the official float32 codes lose integers past 2^24."""
    labels = torch.zeros(size, dtype=torch.int64, device=device)
    for cut in reversed(cuts):
        labels = torch.unique(2 * labels + cut, return_inverse=True)[1]
    return labels


def segment_tokens(features: torch.Tensor, tau: float = 0.5, alpha: float = 10.0) -> torch.Tensor:
    """DiffCut's recursive normalized cut of the `(h, w, C)` features (any float dtype and device, computed in
    fp32 on that device): int64 labels `(h, w)`, 0..K-1, on the same device.

    A cut is accepted when its NCut value is below `tau` (larger: more segments); `alpha` is the affinity
    exponent. The official pipeline L2-normalizes the features before `recursive_ncut` normalizes them again;
    pass normalized features to round as it does.
    """
    h, w, channels = features.shape
    affinity = affinity_matrix(features.reshape(h * w, channels), alpha)
    cuts = recursive_cuts(affinity, tau)
    return assemble(cuts, h * w, features.device).reshape(h, w)
