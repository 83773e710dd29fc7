import torch

from diffseg.aggregate import aggregate, resolution_weights
from synthetic.attention import planted_attention, random_partition
from tests.diffseg.rounding import U, gamma


def random_attention(h: int, w: int, seed: int) -> torch.Tensor:
    logits = torch.randn(h * w, h * w, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1).reshape(h, w, h, w)


def test_default_weights_are_proportional_to_the_grid_side():
    weights = resolution_weights([(64, 64), (32, 32), (16, 16), (8, 8)])
    assert weights == [64 / 120, 32 / 120, 16 / 120, 8 / 120]
    assert resolution_weights([(2, 2), (1, 1)], [3.0, 1.0]) == [0.75, 0.25]


def test_every_aggregated_map_is_a_distribution():
    maps = [random_attention(16 // s, 24 // s, seed=s) for s in (1, 2, 4, 8)]
    out = aggregate(maps)
    assert out.shape == (16 * 24, 16 * 24)
    assert (out >= 0).all()
    # Each resolution's rows are normalized to its weight (the sum of N keys gamma(N), the weight's fp32 rounding
    # and the divisions 3U), the 4 resolutions added (gamma(3)); this check's own sum over N keys gamma(N).
    keys = 16 * 24
    torch.testing.assert_close(out.sum(dim=1), torch.ones(keys), atol=2 * gamma(keys) + gamma(3) + 3 * U, rtol=0)


def test_coarse_query_cells_are_repeated_over_their_fine_block():
    coarse = random_attention(2, 2, seed=0)
    fine = random_attention(4, 4, seed=1)
    out = aggregate([fine, coarse], weights=[0.0, 1.0]).reshape(4, 4, 16)
    # Fine queries (0,0), (0,1), (1,0), (1,1) all lie in coarse cell (0,0).
    for y, x in [(0, 1), (1, 0), (1, 1)]:
        assert torch.equal(out[y, x], out[0, 0])  # the same coarse row added to zeros: the same bits
    assert not torch.allclose(out[0, 0], out[0, 2])


def test_key_dims_are_upsampled_bilinearly_with_half_pixel_centers():
    coarse = torch.zeros(1, 2, 1, 2)
    coarse[0, 0, 0, 0] = 1.0  # the single query attends to the left cell only
    out = aggregate([torch.full((2, 4, 2, 4), 1 / 8), coarse], weights=[0.0, 1.0])
    # Bilinear 1x2 -> 2x4 (align_corners=False): columns 1, 0.75, 0.25, 0, renormalized.
    row = torch.tensor([1.0, 0.75, 0.25, 0.0]) / 4
    # Each value: 4 bilinear taps of non-negatives (gamma(7)), normalized by the sum of 8 keys (gamma(7)) and a
    # division (U); the expected values are exact in fp32, and the zeros must stay exact zeros.
    torch.testing.assert_close(out[0].reshape(2, 4), torch.stack([row, row]), rtol=2 * gamma(7) + U, atol=0)


def test_planted_regions_stay_separated_after_aggregation():
    partition = random_partition(32, 32, regions=3, seed=0)
    out = aggregate(planted_attention(partition))
    labels = partition.reshape(-1)
    # Queries deep inside a region put almost all their mass on it.
    inner = (labels == labels[0]).float()
    assert (out[0] * inner).sum() > 0.9
