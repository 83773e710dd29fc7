import pytest
import torch

from diffseg.merge import anchor_grid, merge, merge_pass, symmetric_kl
from tests.diffseg.rounding import U, assert_within, gamma


def distributions(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).softmax(dim=1)


def kl_rounding(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Bound on the rounding of one fp32 evaluation of the symmetric KL of the rows of `p` and `q` (n keys), either
    from the sums of p log p, q log q, p log q and q log p or from the sums of p log(p / q), in any order: each log
    within 4 ulps (8U, and U more for p / q), each product U, each sum of n terms gamma(n), a few roundings to
    combine the sums, all relative to A_ij = sum_k (p_ik + q_jk)(|log p_ik| + |log q_jk|), which bounds every sum."""
    p, q = p.double(), q.double()
    log_p, log_q = p.log().abs(), q.log().abs()
    a = (p * log_p).sum(1)[:, None] + p @ log_q.T + (q @ log_p.T).T + (q * log_q).sum(1)[None, :]
    return 0.5 * (gamma(p.shape[1]) + 13 * U) * a + U


def test_anchor_grid_matches_the_official_coordinates():
    anchors = anchor_grid(64, 64, 16)
    ys, xs = anchors // 64, anchors % 64
    expected = torch.arange(1, 62, 4)
    assert torch.equal(ys.unique(), expected) and torch.equal(xs.unique(), expected)
    assert len(anchors) == 256


def test_anchor_grid_on_an_oblong_grid_keeps_the_spacing():
    anchors = anchor_grid(48, 64, 16)
    ys, xs = (anchors // 64).unique(), (anchors % 64).unique()
    assert torch.equal(xs, torch.arange(1, 62, 4))
    assert len(ys) == 12 and torch.all(ys.diff() == 4) and ys.min() + ys.max() in (46, 47)


def test_anchor_grid_on_a_grid_smaller_than_the_points():
    assert sorted(anchor_grid(4, 3, 16).tolist()) == list(range(12))


def test_symmetric_kl_matches_the_definition():
    p, q = distributions(5, 40, 0), distributions(7, 40, 1)
    expected = torch.zeros(5, 7)
    for i in range(5):
        for j in range(7):
            kl_pq = (p[i] * (p[i] / q[j]).log()).sum()
            kl_qp = (q[j] * (q[j] / p[i]).log()).sum()
            expected[i, j] = 0.5 * (kl_pq + kl_qp)
    assert_within(symmetric_kl(p, q), expected, 2 * kl_rounding(p, q))  # two fp32 evaluations, two formulas


def test_symmetric_kl_is_symmetric_and_zero_on_the_diagonal():
    p = distributions(30, 64, 2)
    d, bound = symmetric_kl(p, p), kl_rounding(p, p)
    # d_ij and d_ji, and d_ii and the exact 0, are apart by at most the rounding of the evaluations
    assert_within(d, d.T, 2 * bound)
    assert_within(d.diagonal(), torch.zeros(30), bound.diagonal())
    assert (d >= -bound).all()


def test_symmetric_kl_refuses_half_precision():
    p = distributions(3, 8, 0).half()
    with pytest.raises(ValueError):
        symmetric_kl(p, p)


def test_identical_maps_merge_into_one_proposal():
    grid = (8, 8)
    rows = distributions(2, 64, 3)
    attention = torch.cat([rows[0].expand(32, 64), rows[1].expand(32, 64)])
    proposals = merge(attention, grid, num_points=4, thresholds=(0.5, 0.5, 0.5))
    assert len(proposals) == 2
    # Means of identical rows: pass 0 sums the 32 rows of a half (gamma(31)), pass 1 its 8 anchors' proposals
    # (gamma(7)); the counts are powers of 2, so the divisions are exact.
    torch.testing.assert_close(proposals, rows, rtol=gamma(31) + gamma(7), atol=0)


def test_later_passes_walk_proposals_in_order():
    a, b, c = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4, 0.2, 0.4]])
    # c is close to both a and b, a and b are far apart: a takes c, then b stays on its own.
    d = symmetric_kl(torch.stack([a, b, c]), torch.stack([a, b, c]))
    tau = float(d[0, 2]) + 1e-3
    assert d[0, 1] > tau and d[1, 2] < tau
    merged = merge_pass(torch.stack([a, b, c]), tau)
    # Each side: one rounding of a sum of two non-negatives (the 0-weighted row adds exact zeros), halved exactly.
    torch.testing.assert_close(merged, torch.stack([(a + c) / 2, (b + c) / 2]), rtol=2 * U, atol=0)
