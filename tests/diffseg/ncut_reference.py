"""A literal, loop-based reading of the official DiffCut recursion, for the tests of `diffseg.ncut`.

It keeps the official bookkeeping as is: a painting of explored tokens, an affinity whose entries between two
painted tokens are zeroed, a kept set of tokens whose masked row has no zero (every token at the root), dense
degree matrices, one NCut evaluation per threshold, and codes summed from 0/1 cut maps. It departs from the
official code only where that code is square-only, CUDA-only or undefined: any h x w grid on the CPU, NaN NCut
values and sides holding no token or every token count as +inf (the latter's value is rounding noise, and
accepting it recurses forever), a failed `eigh` means no cut, kept indices in ascending order, exact integer codes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reference_segment(features: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """Labels `(h, w)` int64 of the `(h, w, C)` features."""
    h, w, channels = features.shape
    feats = F.normalize(features.reshape(h * w, channels).float().T, p=2, dim=0)
    affinity = torch.t(feats) @ feats
    affinity = (affinity - affinity.min()) / (affinity.max() - affinity.min())
    affinity = affinity**alpha
    cuts: list[torch.Tensor] = []
    _recurse(affinity, tau, (h, w), torch.zeros(h, w), torch.zeros(h, w), cuts, level=0)
    return _assemble(cuts, (h, w))


def _recurse(
    affinity: torch.Tensor,
    tau: float,
    dims: tuple[int, int],
    painting: torch.Tensor,
    mask: torch.Tensor,
    cuts: list[torch.Tensor],
    level: int,
) -> None:
    """One official call: paint `mask (h, w)` over `painting (h, w)`, cut the kept tokens of the `(N, N)`
    affinity, and on success append the `(h, w)` 0/1 cut to `cuts` and recurse into both of its sides."""
    painting = 1.0 * ((painting + mask) > 0)
    flat = painting.reshape(-1)
    affinity = affinity * (1 - torch.outer(flat, flat))
    if level == 0:
        keep = torch.arange(len(affinity))
    else:
        keep = torch.nonzero(~(affinity == 0).any(dim=1)).squeeze(1)
    a = affinity[keep][:, keep]
    d = torch.diag(a.sum(dim=1))
    if len(keep) <= 1:
        return
    vector = _fiedler(a, d)
    if vector is None:
        return
    side, ncut = _bipartition(vector, a, d)
    if not ncut < tau:
        return
    full = torch.zeros(dims[0] * dims[1])
    full[keep] = side
    full = full.reshape(dims)
    cuts.append(full)
    _recurse(affinity, tau, dims, painting, 1 - full, cuts, level + 1)
    _recurse(affinity, tau, dims, painting, full, cuts, level + 1)


def _fiedler(a: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """Sign-fixed D^-1/2 u, u the second eigenvector of D^-1/2 (D - A) D^-1/2, for dense `(n, n)` A and D."""
    d_inv_sqrt = torch.diag(1 / torch.diag(d) ** 0.5)
    try:
        _, vectors = torch.linalg.eigh(d_inv_sqrt @ (d - a) @ d_inv_sqrt)
    except torch.linalg.LinAlgError:
        return None
    vector = d_inv_sqrt @ vectors[:, 1]
    return vector * torch.sign(vector[torch.argmax(torch.abs(vector))])


def _bipartition(vector: torch.Tensor, a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The best of 100 thresholded `(n,)` 0/1 sides of the Fiedler vector, and its NCut value."""
    thresholds = torch.linspace(vector.min() * 0.99, vector.max() * 0.99, 100)
    laplacian = d - a
    degrees = torch.diag(d)
    candidates, values = [], []
    for threshold in thresholds:
        side = 1.0 * (vector > threshold)
        x = 2 * side - 1
        k = torch.sum(degrees * (x > 0)) / torch.sum(d)
        b = k / (1 - k)
        y = (1 + x) - b * (1 - x)
        value = ((y @ laplacian @ y) / (y @ d @ y)).item()
        candidates.append(side)
        proper = 0 < int(side.sum()) < len(side)
        values.append(value if proper and not math.isnan(value) else math.inf)
    best = values.index(min(values))
    return candidates[best], values[best]


def _assemble(cuts: list[torch.Tensor], dims: tuple[int, int]) -> torch.Tensor:
    """`(h, w)` labels: ranks of the codes summed from the `(h, w)` cuts."""
    # Python integers: the codes double with every cut and would overflow any fixed width.
    codes = [0] * (dims[0] * dims[1])
    step = 1
    for cut in cuts:
        codes = [code + step * int(bit) for code, bit in zip(codes, cut.reshape(-1).tolist())]
        step = max(codes) + 1
    rank = {code: i for i, code in enumerate(sorted(set(codes)))}
    return torch.tensor([rank[code] for code in codes], dtype=torch.int64).reshape(dims)
