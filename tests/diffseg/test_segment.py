"""segment_from_attention on synthetic attention whose right answer is known."""

import pytest
import torch

from diffseg import DiffSegConfig, segment_from_attention
from diffseg.segment import segment_images
from synthetic.attention import planted_attention, random_partition
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
