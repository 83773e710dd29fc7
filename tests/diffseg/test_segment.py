"""segment_from_attention on synthetic attention whose right answer is known."""

import pytest
import torch

from diffseg import DiffSegConfig, segment_from_attention
from diffseg.metrics import boundary_f_score
from diffseg.segment import segment_images, segment_images_scored
from synthetic.attention import blurred_attention, planted_attention, random_partition
from synthetic.photos import shapes
from tests.diffseg.planted import matched_miou

GRIDS = [(64, 64), (48, 64), (64, 40)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("regions", [2, 3, 5, 8, 12])
def test_planted_segmentation_is_recovered(grid, regions):
    partition = random_partition(*grid, regions=regions, seed=regions)
    labels = segment_from_attention(planted_attention(partition))
    truth = partition.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert labels.shape == truth.shape and labels.dtype == torch.uint8  # up to 256 proposals
    assert matched_miou(labels, truth) >= 0.95


def test_labels_are_consecutive_from_zero():
    partition = random_partition(32, 32, regions=6, seed=1)
    labels = segment_from_attention(planted_attention(partition))
    assert torch.equal(labels.unique(), torch.arange(int(labels.max()) + 1))


def test_output_size_is_honoured():
    partition = random_partition(16, 24, regions=3, seed=2)
    labels = segment_from_attention(planted_attention(partition), output_size=(333, 517))
    assert labels.shape == (333, 517)


def test_batched_maps_give_the_per_image_results():
    first = planted_attention(random_partition(32, 32, regions=4, seed=3))
    second = planted_attention(random_partition(32, 32, regions=7, seed=4), noise=0.3)
    batched = segment_from_attention([torch.stack([a, b]) for a, b in zip(first, second)])
    assert batched.shape == (2, 256, 256)
    # Exact: a batch is segmented image by image, the same computation on the same values as one image alone.
    assert torch.equal(batched[0], segment_from_attention(first))
    assert torch.equal(batched[1], segment_from_attention(second))


@pytest.mark.parametrize("config", [DiffSegConfig(), DiffSegConfig(refine=True),
                                    DiffSegConfig(method="kmeans-c", num_clusters=4)])
def test_a_batch_of_images_with_their_own_output_sizes_gives_each_its_own_result(config):
    maps = [planted_attention(random_partition(24, 32, regions=r, seed=r), noise=0.3) for r in (3, 6, 9)]
    sizes = [(192, 256), (300, 401), (24, 32)]
    labels = segment_images(maps, config, sizes)
    # Exact: each step runs the same computation on the same values for an image as it does alone.
    for image, size, label in zip(maps, sizes, labels, strict=True):
        assert torch.equal(label, segment_from_attention(image, config, size))


def test_results_are_deterministic():
    maps = planted_attention(random_partition(48, 64, regions=9, seed=5), noise=0.5)
    assert torch.equal(segment_from_attention(maps), segment_from_attention(maps))


def test_order_of_resolutions_does_not_matter():
    maps = planted_attention(random_partition(32, 32, regions=5, seed=6), noise=0.2)
    assert torch.equal(segment_from_attention(maps), segment_from_attention(maps[::-1]))


def test_a_larger_threshold_gives_no_more_segments():
    maps = planted_attention(random_partition(64, 64, regions=10, seed=7), noise=2.0, floor=1e-3)
    counts = [int(segment_from_attention(maps, DiffSegConfig(kl_threshold=tau)).max()) + 1
              for tau in (0.05, 0.2, 0.5, 1.1, 2.0, 4.0)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_refinement_keeps_the_planted_segmentation():
    partition = random_partition(32, 32, regions=4, seed=8)
    labels = segment_from_attention(planted_attention(partition), DiffSegConfig(refine=True))
    truth = partition.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert matched_miou(labels, truth) >= 0.95


def test_mixed_batched_and_unbatched_maps_are_refused():
    maps = planted_attention(random_partition(16, 16, regions=2, seed=9))
    with pytest.raises(ValueError):
        segment_from_attention([maps[0].unsqueeze(0)] + maps[1:])


def disc(size: int, radius: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A `size x size` photo of a disc centred in it, one colour on another with Gaussian noise of 0.04 (pixels
    `(3, size, size)` in [-1, 1]), and its regions (int64, the disc 1)."""
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    regions = ((rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= radius**2).long()
    colours = torch.tensor([[0.5, -0.3, 0.2], [-0.4, 0.4, -0.5]])
    noise = 0.04 * torch.randn(3, size, size, generator=torch.Generator().manual_seed(seed))
    return colours[regions].permute(2, 0, 1) + noise, regions


def test_pamr_moves_the_edges_onto_the_photos():
    pixels, regions = disc(256, 50.3)
    maps = blurred_attention(regions, (32, 32), blur=0.0)
    plain = segment_from_attention(maps, DiffSegConfig())
    refined = segment_from_attention(maps, DiffSegConfig(pamr=True), images=pixels)
    before, after = boundary_f_score(plain, regions), boundary_f_score(refined, regions)
    # Without PAMR the disc's proposal, a distribution over fewer cells than the background's, wins every cell it
    # touches: its edge lies 4 to 8 px outside the photo's, beyond the 2 px tolerance, so BF is near 0. PAMR moves
    # it onto the photo's edge to within half a detail cell (2 px of the 4 px cells at 2x the 32 x 32 grid), so BF
    # is near 1; 0.5 leaves room for the staircase of the cells and the median's rounding.
    assert after >= before + 0.5
    assert int(refined.max()) == 1  # the same two segments, only moved


def test_pamr_gives_the_scored_path_the_same_label_maps():
    images = [shapes(256, seed) for seed in (0, 1)]
    maps = [blurred_attention(regions, (32, 32), blur=1.0) for _, regions in images]
    config, sizes, pixels = DiffSegConfig(pamr=True), [(256, 256), (300, 200)], [p for p, _ in images]
    scored = segment_images_scored(maps, config, sizes, pixels)
    for result, labels in zip(scored, segment_images(maps, config, sizes, pixels), strict=True):
        assert torch.equal(result.labels, labels)  # exact: the same proposals, PAMR and relabelling
        present = int(labels.max()) + 1
        assert result.score[present:].sum() == 0 and result.stability[:present].min() >= 0


def test_pamr_is_refused_without_the_pixels():
    maps = planted_attention(random_partition(16, 16, regions=2, seed=9))
    with pytest.raises(ValueError, match="pamr refines on the images' colours"):
        segment_from_attention(maps, DiffSegConfig(pamr=True))
    with pytest.raises(ValueError, match="pamr refines on the images' colours"):
        segment_images_scored([maps], DiffSegConfig(pamr=True), [(128, 128)])


def test_a_batch_with_pamr_gives_the_per_image_results():
    maps = [planted_attention(random_partition(32, 32, regions=r, seed=r), noise=0.3) for r in (3, 5)]
    pixels = torch.stack([shapes(256, seed)[0] for seed in (2, 3)])
    config = DiffSegConfig(pamr=True)
    batched = segment_from_attention([torch.stack(pair) for pair in zip(*maps)], config, images=pixels)
    for image, photo, labels in zip(maps, pixels, batched, strict=True):
        assert torch.equal(labels, segment_from_attention(image, config, images=photo))
