"""DiffCut's post-processing (`segment_from_features`): features in, label maps out."""

import pytest
import torch
import torch.nn.functional as F

from diffseg import DiffSegConfig, diffcut, segment_from_features
from diffseg.diffcut import DETAIL_SCALE, PIXELS_PER_TOKEN, segment_features, segment_features_scored
from diffseg.ncut import Cut, affinity_matrix, recursive_cuts, segment_tokens
from tests.diffseg.planted import matched_miou, planted_features, quadrants

DIFFCUT = DiffSegConfig(method="diffcut")


def nearest(regions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(regions[None, None].float(), size=size, mode="nearest")[0, 0].long()


def test_planted_segments_are_recovered_at_the_output_size():
    regions = quadrants(8, 12, split=(3, 5))
    labels = segment_from_features(planted_features(regions), DIFFCUT, output_size=(64, 96))
    assert labels.shape == (64, 96) and labels.dtype == torch.uint8
    # Bilinear similarities can move a boundary by up to half a token (4 pixels here) either way.
    assert matched_miou(labels.long(), nearest(regions, (64, 96))) > 0.85
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3]


def test_the_default_output_size_is_the_pixel_size_the_model_saw():
    labels = segment_from_features(planted_features(quadrants(4, 6)), DIFFCUT)
    assert labels.shape == (4 * PIXELS_PER_TOKEN, 6 * PIXELS_PER_TOKEN)


def test_a_batch_gives_each_image_what_it_gets_alone():
    features = torch.stack([planted_features(quadrants(6, 8), seed=seed) for seed in range(3)])
    batched = segment_from_features(features, DIFFCUT, output_size=(24, 32))
    assert batched.shape == (3, 24, 32)
    for image, labels in zip(features, batched):
        assert torch.equal(segment_from_features(image, DIFFCUT, output_size=(24, 32)), labels)


def test_half_precision_features_are_cut_in_fp32():
    features = planted_features(quadrants(6, 8))
    expected = segment_from_features(features, DIFFCUT, output_size=(24, 32)).long()
    # The same segments; their numbering may differ, since it follows the Fiedler vectors' signs, which bf16
    # rounding of the inputs can flip where two entries tie in magnitude.
    assert matched_miou(segment_from_features(features.bfloat16(), DIFFCUT, output_size=(24, 32)).long(), expected) \
        == 1.0


def test_a_larger_cut_threshold_gives_no_fewer_segments():
    features = planted_features(quadrants(8, 8), noise=0.6)
    counts = [int(segment_from_features(features, DiffSegConfig(method="diffcut", ncut_threshold=tau),
                                        output_size=(32, 32)).max()) + 1 for tau in (0.05, 0.5, 1.5)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_pamr_moves_a_misplaced_boundary_onto_the_image_edge():
    """Features put the boundary a token too far right; the image's own edge is where it belongs."""
    grid, size = (4, 8), (4 * DETAIL_SCALE, 8 * DETAIL_SCALE)
    features = planted_features((torch.arange(8) >= 5).long().expand(*grid).contiguous())
    image = torch.full((3, *size), -1.0)
    image[:, :, 4 * DETAIL_SCALE:] = 1.0
    truth = (torch.arange(size[1]) >= 4 * DETAIL_SCALE).long().expand(*size)
    plain = segment_from_features(features, DIFFCUT, output_size=size).long()
    refined = segment_from_features(features, DiffSegConfig(method="diffcut", pamr=True), output_size=size,
                                    images=image).long()
    assert matched_miou(refined, truth) > matched_miou(plain, truth) + 0.05


def test_pamr_needs_the_images():
    with pytest.raises(ValueError, match="images"):
        segment_from_features(planted_features(quadrants(4, 4)), DiffSegConfig(method="diffcut", pamr=True))


def test_bad_feature_shapes_are_refused():
    with pytest.raises(ValueError, match="features must be"):
        segment_from_features(torch.zeros(16, 8), DIFFCUT)


@pytest.mark.parametrize("pamr", [False, True])
def test_scores_come_with_the_same_label_maps(pamr):
    config = DiffSegConfig(method="diffcut", pamr=pamr)
    features = [planted_features(quadrants(6, 8), seed=seed) for seed in range(2)]
    images = [torch.rand(3, 6 * PIXELS_PER_TOKEN, 8 * PIXELS_PER_TOKEN) for _ in features]
    sizes = [(30, 40), (48, 64)]
    plain = segment_features(features, config, sizes, images)
    scored = segment_features_scored(features, config, sizes, images)
    for labels, result in zip(plain, scored):
        assert torch.equal(result.labels, labels)
        count = int(labels.max()) + 1
        assert ((result.score[:count] > 0) & (result.score[:count] <= 1)).all()
        assert ((result.stability[:count] >= 0) & (result.stability[:count] <= 1)).all()


@pytest.mark.parametrize("method", ["diffcut", "kway"])
def test_an_image_whose_cut_stops_at_its_work_bound_says_so(method):
    """Noise at DiffCut's width is peeled a few tokens at a time, past `ncut.MAX_WORK` (tests/diffseg/test_ncut.py);
    planted segments are cut well within it."""
    config = DiffSegConfig(method=method)
    noise = torch.randn(20, 20, 1280, generator=torch.Generator().manual_seed(0))
    stopped, planted = segment_features_scored([noise, planted_features(quadrants(8, 8))], config,
                                               [(40, 40), (32, 32)])
    assert stopped.warning == diffcut.WORK_BOUND and planted.warning is None
    assert int(stopped.labels.max()) + 1 > 1, "the cuts made before the bound are kept"


def test_well_separated_segments_are_stable_and_confident():
    result, = segment_features_scored([planted_features(quadrants(8, 8))], DIFFCUT, [(32, 32)])
    # Moving tau by 10% cannot change a cut whose planted segments are orthogonal up to 5% noise.
    assert torch.equal(result.stability[:4], torch.ones(4))
    assert (result.score[:4] > 0.5).all()


def separate_recursions(tokens, taus, alpha):
    """What `segment_features_scored` did before it pruned one recursion: one recursive cut per threshold."""
    h, w, channels = tokens.shape
    affinity = affinity_matrix(tokens.reshape(h * w, channels), alpha)
    return [Cut(recursive_cuts(affinity, tau).labels(tau).reshape(h, w), True) for tau in taus]


@pytest.mark.parametrize("pamr", [False, True])
def test_scores_are_those_of_one_recursion_per_threshold(pamr, monkeypatch):
    config = DiffSegConfig(method="diffcut", pamr=pamr)
    # Noisy enough that the thresholds x0.9 and x1.1 cut differently, so that the stability is not all 1.
    features = [planted_features(quadrants(7, 9), noise=0.6, seed=seed) for seed in (1, 2)]
    images = [torch.rand(3, 7 * PIXELS_PER_TOKEN, 9 * PIXELS_PER_TOKEN, generator=torch.Generator().manual_seed(0))
              for _ in features]
    sizes = [(35, 45), (56, 72)]
    pruned = segment_features_scored(features, config, sizes, images)
    monkeypatch.setattr(diffcut.ncut, "segment_tokens_multi", separate_recursions)
    separate = segment_features_scored(features, config, sizes, images)
    assert any((result.stability < 1).any() for result in separate)
    for a, b in zip(pruned, separate):
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.score, b.score)
        assert torch.equal(a.stability, b.stability)


def test_scores_cost_the_eigendecompositions_of_one_recursion(monkeypatch):
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda matrix: calls.append(len(matrix)) or eigh(matrix))
    features = [planted_features(quadrants(7, 9), noise=0.6, seed=2)]
    tokens = F.normalize(features[0], dim=-1)
    per_tau = []
    for step in (1.0, 0.9, 1.1):
        segment_tokens(tokens, DIFFCUT.ncut_threshold * step, DIFFCUT.alpha)
        per_tau.append(len(calls))
        calls.clear()
    segment_features(features, DIFFCUT, [(28, 36)])
    assert len(calls) == per_tau[0]
    calls.clear()
    segment_features_scored(features, DIFFCUT, [(28, 36)])
    assert len(calls) == per_tau[2] < sum(per_tau)
