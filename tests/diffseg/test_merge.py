import pytest
import torch

from diffseg.merge import _merge_pass, anchor_grid, merge, symmetric_kl


def distributions(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).softmax(dim=1)


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
    torch.testing.assert_close(symmetric_kl(p, q), expected, atol=1e-5, rtol=1e-4)


def test_symmetric_kl_is_symmetric_and_zero_on_the_diagonal():
    p = distributions(30, 64, 2)
    d = symmetric_kl(p, p)
    torch.testing.assert_close(d, d.T, atol=1e-5, rtol=0)
    assert d.diagonal().abs().max() < 1e-5
    assert (d + 1e-5 >= 0).all()


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
    torch.testing.assert_close(proposals[0], rows[0])
    torch.testing.assert_close(proposals[1], rows[1])


def test_later_passes_walk_proposals_in_order():
    a, b, c = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4, 0.2, 0.4]])
    # c is close to both a and b, a and b are far apart: a takes c, then b stays on its own.
    d = symmetric_kl(torch.stack([a, b, c]), torch.stack([a, b, c]))
    tau = float(d[0, 2]) + 1e-3
    assert d[0, 1] > tau and d[1, 2] < tau
    merged = _merge_pass(torch.stack([a, b, c]), tau)
    torch.testing.assert_close(merged, torch.stack([(a + c) / 2, (b + c) / 2]))
