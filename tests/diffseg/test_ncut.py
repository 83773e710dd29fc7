import pytest
import torch

from diffseg.ncut import (
    CUDA_EIGH_MIN_SIZE,
    MAX_WORK,
    WORD_BITS,
    affinity_matrix,
    assemble,
    cuts_at,
    ncut_values,
    recursive_cuts,
    second_eigenvector,
    segment_tokens,
    segment_tokens_multi,
)
from tests.diffseg.ncut_reference import reference_segment

REGIONS = ((0, 0.5, 0, 0.45), (0.5, 1, 0, 0.3), (0.25, 0.75, 0.55, 1), (0.8, 1, 0.5, 0.9))
"""Rectangles (top, bottom, left, right, as fractions of the grid) over a background: five segments of
different sizes, so that no two cuts of the recursion are nearly as good."""


def planted(h: int, w: int, seed: int, noise: float = 0.3, channels: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Features `(h, w, channels)`: one random direction per segment of `REGIONS` plus Gaussian noise; and the
    `(h, w)` segment index of every token."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(h, w, dtype=torch.int64)
    for i, (top, bottom, left, right) in enumerate(REGIONS):
        truth[round(top * h) : round(bottom * h), round(left * w) : round(right * w)] = i + 1
    directions = torch.randn(len(REGIONS) + 1, channels, generator=g)
    return directions[truth] + noise * torch.randn(h, w, channels, generator=g), truth


def frozen(features: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """`(h, w)` bool: tokens whose affinity row holds an exact zero, which no cut after the first one moves."""
    h, w, channels = features.shape
    return (affinity_matrix(features.reshape(h * w, channels), alpha) == 0).any(dim=1).reshape(h, w)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two label maps are one partition up to renaming: every pair of labels that meets is the only
    pair for both of its labels."""
    pairs = set(zip(a.flatten().tolist(), b.flatten().tolist()))
    return len(pairs) == len(a.unique()) == len(b.unique())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_regions_are_recovered(seed):
    features, truth = planted(12, 16, seed)
    labels = segment_tokens(features)
    # The official rule leaves the pair at the global minimum of the affinity out of every cut after the first,
    # so those two tokens may land on the wrong side of a later cut; all others must match.
    moved = frozen(features)
    assert int(moved.sum()) == 2
    assert same_partition(labels[~moved], truth[~moved])
    assert int(labels.max()) + 1 == len(REGIONS) + 1


# Features with well separated segments: every accepted cut, and every choice of threshold, wins by far more
# than the rounding by which the fast path and the reference differ (another order of summation in the
# affinity and NCut products), so the two must agree exactly, including the numbering of the segments.
@pytest.mark.parametrize(
    ("h", "w", "seed", "tau", "alpha"),
    [
        (10, 10, 0, 0.5, 10.0),
        (10, 10, 1, 0.3, 1.0),
        (10, 10, 2, 0.7, 10.0),
        (12, 16, 0, 0.7, 1.0),
        (12, 16, 1, 0.5, 10.0),
        (12, 16, 3, 0.3, 10.0),
        (14, 9, 2, 0.5, 1.0),
        (14, 9, 4, 0.7, 10.0),
        (14, 9, 5, 0.3, 10.0),
    ],
)
def test_fast_path_equals_the_reference(h, w, seed, tau, alpha):
    features, _ = planted(h, w, seed)
    assert torch.equal(segment_tokens(features, tau, alpha), reference_segment(features, tau, alpha))


def antipodal() -> tuple[torch.Tensor, torch.Tensor]:
    """Features `(10, 12, 48)` of three nearly noiseless segments, two of them along opposite directions, so the
    power flushes every affinity across those two to 0; and the `(10, 12)` segment index of every token."""
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(10, 12, dtype=torch.int64)
    truth[:, 5:] = 1
    truth[6:, :3] = 2
    u = torch.randn(48, generator=g)
    directions = torch.stack([u, -u, torch.randn(48, generator=g)])
    return directions[truth] + 0.002 * torch.randn(10, 12, 48, generator=g), truth


def test_tokens_with_a_zero_affinity_take_no_part_in_later_cuts():
    features, truth = antipodal()
    assert torch.equal(frozen(features), truth < 2)
    labels = segment_tokens(features)
    assert torch.equal(labels, reference_segment(features, 0.5, 10.0))
    # The first cut separates segment 0; segment 2 is then alone in its region, so it is never told apart
    # from the frozen segment 1.
    assert same_partition(labels, truth.clamp(max=1))


def test_a_side_holding_every_token_is_no_cut():
    """Nearly disconnected segments: the Fiedler vector can take one sign over a region, so that the lowest
    threshold puts every token on one side, and its NCut value, 0/0 in exact arithmetic, rounds to about 1e-8.
    Accepted, that cut would be the region again, forever."""
    features, truth = planted(10, 10, 0, noise=0.1, channels=256)
    labels = segment_tokens(features)
    assert torch.equal(labels, reference_segment(features, 0.5, 10.0))
    moved = frozen(features)
    assert same_partition(labels[~moved], truth[~moved])


def test_non_square_grid_follows_rows_and_columns():
    features, truth = planted(6, 20, 0)
    labels = segment_tokens(features)
    transposed = segment_tokens(features.transpose(0, 1))
    assert labels.shape == (6, 20) and transposed.shape == (20, 6)
    moved = frozen(features)
    assert same_partition(labels[~moved], truth[~moved])
    assert same_partition(transposed.T[~moved], truth[~moved])


def test_larger_tau_refines_the_segmentation():
    features, _ = planted(12, 16, 1, noise=0.6)
    taus = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9]
    segmentations = [segment_tokens(features, tau) for tau in taus]
    counts = [int(labels.max()) + 1 for labels in segmentations]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    for coarse, fine in zip(segmentations, segmentations[1:]):
        # Every cut accepted under a smaller tau is accepted under a larger one, so segments only split.
        assert len(set(zip(fine.flatten().tolist(), coarse.flatten().tolist()))) == int(fine.max()) + 1


def test_tiny_tau_gives_a_single_segment():
    features, _ = planted(12, 16, 0)
    assert torch.equal(segment_tokens(features, tau=1e-6), torch.zeros(12, 16, dtype=torch.int64))


def test_constant_features_give_a_single_segment():
    # The min-max normalization divides 0 by 0: no threshold has a defined NCut value.
    assert torch.equal(segment_tokens(torch.ones(5, 7, 8)), torch.zeros(5, 7, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_are_cut_in_fp32(dtype):
    features, truth = planted(12, 16, 0)
    low = features.to(dtype)
    labels = segment_tokens(low)
    assert torch.equal(labels, segment_tokens(low.float()))
    moved = frozen(low.float())
    assert same_partition(labels[~moved], truth[~moved])


def test_labels_are_consecutive_int64():
    features, _ = planted(12, 16, 2, noise=0.6)
    labels = segment_tokens(features, tau=0.7)
    assert labels.dtype == torch.int64
    assert torch.equal(labels.unique(), torch.arange(int(labels.max()) + 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("size", [CUDA_EIGH_MIN_SIZE - 1, CUDA_EIGH_MIN_SIZE])
def test_small_cuda_matrices_are_decomposed_by_the_cpu(size):
    points = torch.randn(size, 16, generator=torch.Generator().manual_seed(0))
    matrix = points @ points.T
    vector = second_eigenvector(matrix.cuda())
    assert vector.device.type == "cuda"
    on_cpu = torch.equal(vector.cpu(), torch.linalg.eigh(matrix)[1][:, 1])
    assert on_cpu == (size < CUDA_EIGH_MIN_SIZE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_give_the_cpu_labels_on_cuda():
    features, _ = planted(12, 16, 1)
    labels = segment_tokens(features.cuda())
    assert labels.device.type == "cuda"
    assert torch.equal(labels.cpu(), segment_tokens(features))


def noisy(h: int, w: int, seed: int) -> torch.Tensor:
    """Features `(h, w, 48)` whose segments only some thresholds near 0.5 tell apart (see `planted`)."""
    return planted(h, w, seed, noise=0.6)[0]


# One recursion at the largest tau, pruned, against separate recursions: square and non-square grids, tokens
# frozen by an exact zero, and a tree of more cuts than one sort key of `assemble` holds.
@pytest.mark.parametrize(
    ("features", "tau"),
    [
        (noisy(10, 10, 0), 0.5),
        (noisy(12, 16, 1), 0.7),
        (noisy(10, 10, 2), 0.7),
        (planted(14, 9, 2)[0], 0.5),
        (antipodal()[0], 0.5),
    ],
)
def test_one_recursion_gives_the_labels_of_each_threshold(features, tau):
    taus = [tau * 0.9, tau, tau * 1.1]
    separate = [segment_tokens(features, t) for t in taus]
    assert all(torch.equal(a.labels, b) for a, b in zip(segment_tokens_multi(features, taus), separate))
    assert all(torch.equal(a.labels, b) for a, b in zip(segment_tokens_multi(features, taus[::-1]), separate[::-1]))


def test_the_pruned_thresholds_differ_and_the_largest_tree_has_many_cuts():
    """The cases above are not trivial: the thresholds give different labels, and one tree has more cuts than
    `WORD_BITS`."""
    counts = [int(cut.labels.max()) + 1 for cut in segment_tokens_multi(noisy(10, 10, 2), [0.63, 0.7, 0.77])]
    assert len(set(counts)) == 3 and counts[-1] > WORD_BITS + 1


def eigh_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every `torch.linalg.eigh` call from now on."""
    calls: list[int] = []
    eigh = torch.linalg.eigh

    def counting(matrix, *args, **kwargs):
        calls.append(len(matrix))
        return eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", counting)
    return calls


def test_several_thresholds_cost_the_eigendecompositions_of_the_largest(monkeypatch):
    features, taus = noisy(10, 10, 0), [0.45, 0.5, 0.55]
    calls = eigh_calls(monkeypatch)
    per_tau = []
    for tau in taus:
        segment_tokens(features, tau)
        per_tau.append(len(calls))
        calls.clear()
    segment_tokens_multi(features, taus)
    assert len(calls) == per_tau[-1] < sum(per_tau)


def test_a_tree_gives_no_threshold_above_its_own():
    tree = recursive_cuts(affinity_matrix(noisy(6, 6, 0).reshape(36, -1), 10.0), 0.5)
    assert torch.equal(tree.labels(0.5), segment_tokens(noisy(6, 6, 0)).reshape(-1))
    with pytest.raises(ValueError, match="cannot give"):
        tree.labels(0.51)


@pytest.mark.parametrize("count", [0, 1, WORD_BITS, WORD_BITS + 1, 3 * WORD_BITS + 5])
def test_assemble_ranks_the_official_codes_beyond_float32(count):
    cuts = list(torch.rand(count, 50, generator=torch.Generator().manual_seed(count)) < 0.3)
    codes, step = [0] * 50, 1
    for cut in cuts:
        codes = [code + step * int(bit) for code, bit in zip(codes, cut.tolist())]
        step = max(codes) + 1
    rank = {code: i for i, code in enumerate(sorted(set(codes)))}
    assert assemble(cuts, 50, "cpu").tolist() == [rank[code] for code in codes]


def test_ncut_values_match_cut_over_volume():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(9, 9, generator=g)
    affinity = points @ points.T
    degree = affinity.sum(dim=1)
    sides = torch.rand(9, 5, generator=g) < 0.5
    sides[:, 0], sides[:, 1] = True, False
    sides[0, 2:], sides[1, 2:] = True, False
    values = ncut_values(sides, torch.diag(degree) - affinity, degree)
    assert values[:2].isinf().all()
    a, s = affinity.double(), sides.double()
    cut = ((s.T @ a) * (1 - s.T)).sum(dim=1)
    expected = cut / (s.T @ degree.double()) + cut / ((1 - s.T) @ degree.double())
    torch.testing.assert_close(values[2:].double(), expected[2:], rtol=1e-5, atol=0)


def structureless(side: int, channels: int = 64, seed: int = 0) -> torch.Tensor:
    """Features `(side, side, channels)` of pure noise: the recursion peels them apart a few tokens at a time,
    each cut an eigendecomposition of nearly the whole grid."""
    return torch.randn(side, side, channels, generator=torch.Generator().manual_seed(seed))


def test_features_without_structure_cost_many_whole_grid_decompositions_unbounded():
    """The case the bound is for: unbounded, the recursion over-segments noise, one small piece at a time."""
    features = structureless(12)
    tree = recursive_cuts(affinity_matrix(features.reshape(144, -1), 10.0), 0.5, max_work=float("inf"))
    assert tree.complete and len(tree.cuts) > 100


def test_the_recursion_stops_at_its_work_bound_with_the_cuts_made_so_far(monkeypatch):
    affinity = affinity_matrix(structureless(12).reshape(144, -1), 10.0)
    unbounded = recursive_cuts(affinity, 0.5, max_work=float("inf"))
    calls = eigh_calls(monkeypatch)
    bounded = recursive_cuts(affinity, 0.5, max_work=8)
    assert not bounded.complete
    assert sum(n**3 for n in calls) <= 8 * 144**3
    # It stops as the unbounded recursion would have gone on: its cuts are the first ones of that recursion.
    assert 1 < len(bounded.cuts) < len(unbounded.cuts)
    assert all(torch.equal(a, b) for a, b in zip(bounded.cuts, unbounded.cuts))
    assert int(bounded.labels(0.5).max()) + 1 == len(bounded.cuts) + 1


def test_the_default_bound_stops_noise_and_leaves_planted_segments_alone(monkeypatch):
    """At DiffCut's width (1280 channels) noise is peeled a few tokens at a time: unbounded, 400 tokens take about
    400 cuts here."""
    calls = eigh_calls(monkeypatch)
    over = segment_tokens_multi(structureless(20, channels=1280), [0.5])[0]
    assert not over.complete
    assert MAX_WORK * 400**3 - 400**3 < sum(n**3 for n in calls) <= MAX_WORK * 400**3
    planted_cut = segment_tokens_multi(planted(12, 16, 0)[0], [0.5])[0]
    assert planted_cut.complete
    assert torch.equal(planted_cut.labels, segment_tokens(planted(12, 16, 0)[0]))


def test_the_thresholds_of_a_stopped_recursion_share_its_work_and_are_marked_incomplete(monkeypatch):
    affinity = affinity_matrix(structureless(12).reshape(144, -1), 10.0)
    taus = [0.45, 0.5, 0.55]
    calls = eigh_calls(monkeypatch)
    together = cuts_at(affinity, taus, max_work=8)
    assert sum(n**3 for n in calls) <= 8 * 144**3, "one bounded recursion, not one per threshold"
    stopped = recursive_cuts(affinity, 0.55, max_work=8)
    assert not stopped.complete
    for tau, cut in zip(taus, together):
        assert torch.equal(cut.labels, stopped.labels(tau)) and not cut.complete
