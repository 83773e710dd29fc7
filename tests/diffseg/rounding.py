"""Worst-case fp32 rounding bounds, for tests that compare two fp32 evaluations of the same math.

Vendors' kernels (MKL or OpenBLAS, AVX-512 or AVX2, oneDNN, OpenMP thread counts, chunking) sum in different
orders and block differently, so two correct evaluations differ by rounding that depends on the machine. The
bounds here hold for any order of summation, with or without FMA, so a test using them passes on every CPU
and still fails on a real error (a wrong row, head, scale or normalization moves values by O(1), not O(eps)).

Notation (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3): `U` is the unit roundoff, and a dot
product or sum of `n` terms computed in any order is within `gamma(n) * sum(|terms|)` of the exact value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention

U = 2.0**-24
"""fp32 unit roundoff: one rounding to nearest moves a value by at most U times itself."""

TINY = torch.finfo(torch.float32).tiny
"""Smallest normal fp32. Probabilities whose exp underflows into subnormals (or to 0) have no relative error
bound, only this absolute one."""

EXP_ULPS = 4
"""ulps of error allowed for one fp32 exp: glibc's and Sleef's are within 1, PyTorch's vectorized exp_u20
within 2; 4 covers any of them."""


def gamma(n: int) -> float:
    """Relative error bound of `n` successive roundings: `n U / (1 - n U)`."""
    return n * U / (1 - n * U)


@dataclass(frozen=True)
class AttentionBounds:
    """How far two correct fp32 evaluations of one self-attention layer on the same input may be apart."""

    probs: float
    """Relative bound on |p1 - p2| / p2 for the attention probabilities of one head."""
    output: torch.Tensor
    """Absolute bound on the difference of the layer outputs, per output channel (broadcasts over tokens)."""

    def maps(self, terms: int) -> float:
        """Relative bound for maps that add up `terms` head (and layer) probabilities, each evaluation in its own
        order, and divide once: the summands' bound, plus each side's sum and division."""
        return math.expm1(math.log1p(self.probs) + 2 * gamma(terms) + 2 * U)


def attention_bounds(layer: Attention, hidden: torch.Tensor) -> AttentionBounds:
    """Rounding bounds for `layer`'s self-attention `to_out(softmax(scale q k^T) v)` on `hidden` `(B, N, C)`.

    Per evaluation, first order:
    - a score, a dot product over the head dim d, scaled (scale and scaled operand each rounded): within
      `(gamma(d) + 3U) S`, S the largest `scale * sum |q||k|`;
    - softmax of its computed scores: `s - max` is rounded by up to `2 U S`, exp by `EXP_ULPS` ulps, the sum of
      N terms by `gamma(N)`, the division and an online (blocked) softmax's rescaling by a few U more;
    - p is exp(s) / sum exp(s), so a score error e moves log p by at most 2e.
    Two evaluations: twice each, and once more to make the bound relative to the second one.
    The output `W a + b` (a = p v per head) differs through the probabilities and the sum over N keys of each
    side, then through `W` and each side's product over C channels.
    """
    assert layer.group_norm is None and layer.spatial_norm is None and not layer.residual_connection
    assert layer.rescale_output_factor == 1 and layer.norm_q is None and layer.norm_k is None
    with torch.inference_mode():
        q = layer.head_to_batch_dim(layer.to_q(hidden)).double()
        k = layer.head_to_batch_dim(layer.to_k(hidden)).double()
        v = layer.to_v(hidden).double().abs()
    tokens, head_dim = q.shape[1], q.shape[2]
    largest = layer.scale * float(torch.bmm(q.abs(), k.abs().transpose(1, 2)).max())
    score = (gamma(head_dim) + 3 * U) * largest
    softmax = 2 * U * largest + 2 * EXP_ULPS * U + gamma(tokens) + 8 * U
    probs = math.expm1(4 * score + 3 * softmax)

    v_max = v.reshape(-1, v.shape[-1]).amax(dim=0)  # |a_c| <= max_j |v_jc| (sum p <= 1 + probs)
    a_bound = (probs + 2 * gamma(tokens) + 2 * U) * (1 + probs) * v_max
    linear = layer.to_out[0]
    weight = linear.weight.detach().double().abs()
    bias = linear.bias.detach().double().abs() if linear.bias is not None else 0.0
    rounding = 2 * gamma(weight.shape[1] + 1) * (weight @ (v_max * (1 + probs)) + bias)
    return AttentionBounds(probs, (weight @ a_bound + rounding).float())


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor | float) -> None:
    """|actual - expected| <= bound elementwise (bound broadcasts), with the worst element in the message."""
    difference = (actual.double() - expected.double()).abs()
    ratio = difference / torch.as_tensor(bound, dtype=torch.float64)
    worst = int(ratio.argmax())
    assert float(ratio.flatten()[worst]) <= 1, (
        f"difference {float(difference.flatten()[worst]):.3g} at flat index {worst} is "
        f"{float(ratio.flatten()[worst]):.3g} times its rounding bound")
