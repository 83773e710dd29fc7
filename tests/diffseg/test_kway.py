import pytest
import torch

from benchmarks.bench_cuts import planted as planted_family
from diffseg import kway
from diffseg.ncut import affinity_matrix, recursive_cuts
from tests.diffseg.planted import matched_miou
from tests.diffseg.test_ncut import planted

# Objective values are sums of at most K ratios of fp32 sums over N <= 1024 tokens: their rounding is about
# K * N * 2^-24, under 1e-3 here; a float64 value compared with another's is exact to far below that.
ROUNDING = 1e-3


def random_affinity(tokens: int, seed: int) -> torch.Tensor:
    """`(tokens, tokens)` affinity of random features (a graph without planted structure)."""
    features = torch.randn(tokens, 16, generator=torch.Generator().manual_seed(seed))
    return affinity_matrix(features, alpha=2.0)


def test_the_value_is_cut_over_volume_summed_over_segments():
    affinity = torch.tensor([[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # Segment {0, 1}: cut 0.1 + 0.2, volume 1.6 + 1.7; segment {2}: cut 0.3, volume 1.3.
    expected = 0.3 / 3.3 + 0.3 / 1.3
    assert kway.ncut_value(affinity, labels).item() == pytest.approx(expected, rel=1e-12)
    assert kway.ncut_value(affinity, labels + 7).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_the_descent_never_raises_the_value(seed):
    affinity = random_affinity(120, seed)
    start = torch.randint(0, 6, (1, 120), generator=torch.Generator().manual_seed(seed))
    labels, steps, settled = kway.descend(affinity[None], start)
    assert 1 <= steps <= kway.MAX_STEPS and settled.tolist() == [steps < kway.MAX_STEPS]
    assert kway.ncut_value(affinity, labels[0]) <= kway.ncut_value(affinity, start[0]) + ROUNDING
    assert labels.unique().tolist() == list(range(int(labels.max()) + 1))


def test_a_scrambled_planted_partition_is_restored():
    features, truth = planted(16, 16, seed=0)
    affinity = affinity_matrix(features.reshape(256, -1), 10.0)
    scrambled = truth.reshape(-1).clone()
    flip = torch.rand(256, generator=torch.Generator().manual_seed(1)) < 0.2
    scrambled[flip] = (scrambled[flip] + 1) % (int(truth.max()) + 1)
    labels = kway.descend(affinity[None], scrambled[None]).labels
    assert matched_miou(labels[0], truth) == 1.0


def test_the_images_of_a_batch_descend_as_they_would_alone():
    affinities = torch.stack([random_affinity(64, seed) for seed in (5, 6)])
    starts = torch.stack([torch.arange(64) % 3, torch.arange(64) % 5])
    together = kway.descend(affinities, starts)
    for image in range(2):
        alone = kway.descend(affinities[image : image + 1], starts[image : image + 1])
        assert torch.equal(together.labels[image], alone.labels[0])
        assert together.settled[image] == alone.settled[0]


def test_max_steps_bounds_the_work_and_keeps_what_was_reached():
    affinity = random_affinity(200, seed=3)
    start = torch.arange(200)[None] % 7
    labels, steps, settled = kway.descend(affinity[None], start, max_steps=1)
    assert steps == 1 and settled.tolist() == [False], "stopped by the bound, not settled"
    assert kway.ncut_value(affinity, labels[0]) <= kway.ncut_value(affinity, start[0]) + ROUNDING


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("side", [16, 40])
def test_planted_segments_are_found_with_no_higher_value_than_diffcut(seed, side):
    """16 x 16 runs the recursion on the tokens themselves; 40 x 40 on the tokens pooled 2 x 2."""
    features, truth = planted(side, side, seed, noise=0.6)
    labels = kway.segment_tokens(features[None])[0]
    assert labels.shape == (side, side)
    affinity = affinity_matrix(features.reshape(side * side, -1), 10.0)
    diffcut = recursive_cuts(affinity, 0.5).labels(0.5)
    assert kway.ncut_value(affinity, labels.reshape(-1)) <= kway.ncut_value(affinity, diffcut) + ROUNDING
    assert matched_miou(labels, truth) >= matched_miou(diffcut.reshape(side, side), truth)
    assert matched_miou(labels, truth) > 0.95


def test_a_small_region_that_pooling_cuts_into_pieces_is_kept():
    """64 x 64 tokens are cut pooled 2 x 2: a Voronoi cell of 17 tokens leaves only pooled tokens alone in their
    segments, which must come back together as one segment rather than join their neighbours."""
    features, truth = planted_family("voronoi", 64, noise=0.6, seed=0)
    assert int(torch.bincount(truth.reshape(-1)).min()) < 20
    labels = kway.segment_tokens(features[None])[0]
    assert int(labels.max()) + 1 == int(truth.max()) + 1
    assert matched_miou(labels, truth) > 0.99
