import numpy as np
import pytest
import torch

from diffseg.merge import _anchor_pass, _walk, anchor_grid, merge, merge_batch, merge_pass, symmetric_kl
from tests.diffseg.planted import planted_features, quadrants
from tests.diffseg.rounding import U, assert_within, gamma

GRID = (32, 32)


def distributions(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).softmax(dim=1)


def planted_attention(seed: int) -> torch.Tensor:
    """fp32 `(1024, 1024)` attention on a 32x32 grid: four planted regions and a Gaussian falloff with distance, so
    that later passes have from one to a few dozen groups per set of thresholds."""
    features = planted_features(quadrants(*GRID, (12, 20)), noise=0.5, seed=seed).reshape(-1, 64)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    cells = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    return (3 * features @ features.T - torch.cdist(cells, cells) ** 2 / 16).softmax(dim=1)


def reference_walk(close: torch.Tensor) -> torch.Tensor:
    """The later passes' walk as the paper states it, element by element, on the `(K, K)` bool closeness (row i:
    which proposals are within the threshold of proposal i): `(G, K)` bool, one row per group in the order
    emitted."""
    rows = close.tolist()
    matched, groups = [False] * len(rows), []
    for i, row in enumerate(rows):
        if matched[i]:
            continue
        group = [near or j == i for j, near in enumerate(row)]
        matched = [m or g for m, g in zip(matched, group)]
        groups.append(group)
    return torch.tensor(groups)


def reference_pass(proposals: torch.Tensor, threshold: float) -> torch.Tensor:
    """A later pass as computed before the walk moved to numpy: the groups' `members @ proposals / counts`."""
    members = reference_walk(symmetric_kl(proposals, proposals) < threshold).to(proposals.dtype)
    return (members @ proposals) / members.sum(dim=1, keepdim=True)


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


CLOSENESS = {
    "identity": torch.eye(256, dtype=torch.bool),
    "all close": torch.ones(256, 256, dtype=torch.bool),
    "none close, not even to itself": torch.zeros(256, 256, dtype=torch.bool),
    "all but itself": ~torch.eye(256, dtype=torch.bool),
    "one proposal": torch.zeros(1, 1, dtype=torch.bool),
    "upper triangle": torch.ones(256, 256, dtype=torch.bool).triu(1),
    **{f"asymmetric, {density:.1%} close": torch.rand(256, 256, generator=torch.Generator().manual_seed(seed)) < density
       for seed, density in enumerate((0.005, 0.02, 0.1, 0.5))},
}


@pytest.mark.parametrize("name", CLOSENESS)
def test_the_walk_finds_the_groups_of_the_direct_reference(name):
    close = CLOSENESS[name]
    original = close.clone()
    assert np.array_equal(_walk(close.numpy()), reference_walk(close).numpy())
    assert torch.equal(close, original)


def test_a_pass_over_real_proposals_is_bit_identical_to_the_reference():
    (proposals,) = _anchor_pass(planted_attention(0), GRID, 16, [0.9])
    merged = merge_pass(proposals, 0.9)
    assert 1 < len(merged) < len(proposals)
    assert torch.equal(merged, reference_pass(proposals, 0.9))


def test_a_batch_of_images_and_sets_is_bit_identical_to_the_reference_for_each():
    """All sets of a pass go to the host and back in one copy each way: each set's groups and means must be its
    own, also when the sets have different proposal counts (the second pass)."""
    attentions = [planted_attention(seed) for seed in (0, 1)]
    sets = [(0.9, 0.9, 0.9), (1.1, 0.5, 2.0), (0.5, 1.5, 0.7)]
    merged = merge_batch(attentions, GRID, 16, sets)
    counts = set()
    for attention, per_set in zip(attentions, merged):
        for thresholds, result in zip(sets, per_set):
            (expected,) = _anchor_pass(attention, GRID, 16, thresholds[:1])
            for threshold in thresholds[1:]:
                counts.add(len(expected))
                expected = reference_pass(expected, threshold)
            assert torch.equal(result, expected)
    assert len(counts) > 2  # 256 anchors in the first pass, then different counts per image and set
