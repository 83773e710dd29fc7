"""Segment descriptors: the mean normalized feature under each segment's pixels."""

import pytest
import torch
import torch.nn.functional as F

from diffseg import DiffSeg, DiffSegConfig
from diffseg.descriptors import segment_descriptors
from synthetic.photos import photo


def per_pixel(labels: torch.Tensor, features: torch.Tensor, count: int) -> torch.Tensor:
    """The definition, pixel by pixel: each pixel takes the normalized feature of the token it lies in."""
    height, width = labels.shape
    h, w, _ = features.shape
    normalized = F.normalize(features.double(), dim=-1)
    sums = torch.zeros(count, features.shape[-1], dtype=torch.float64)
    areas = torch.zeros(count, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            label = int(labels[y, x])
            sums[label] += normalized[y * h // height, x * w // width]
            areas[label] += 1
    return sums / areas.clamp_min(1)[:, None]


@pytest.mark.parametrize("size, grid", [((24, 40), (3, 5)), ((17, 23), (4, 6)), ((8, 8), (8, 8))])
def test_a_descriptor_is_the_mean_normalized_feature_under_the_segments_pixels(size, grid):
    generator = torch.Generator().manual_seed(sum(size))
    labels = torch.randint(0, 4, size, generator=generator).to(torch.uint8)
    labels[0, 0] = 3
    features = torch.randn(*grid, 16, generator=generator)
    ours = segment_descriptors(labels, features, 5)
    # fp32 sums of at most a few hundred unit-norm terms against fp64: far inside 1e-5.
    torch.testing.assert_close(ours.double(), per_pixel(labels, features, 5), rtol=0, atol=1e-5)
    assert torch.equal(ours[4], torch.zeros(16))  # a label with no pixel


def test_segments_of_one_direction_get_that_direction():
    direction = F.normalize(torch.randn(32), dim=0)
    features = torch.randn(4, 4, 32)
    features[:, :2] = 3 * direction  # any length: features are normalized first
    labels = torch.zeros(16, 16, dtype=torch.uint8)
    labels[:, 8:] = 1
    descriptors = segment_descriptors(labels, features, 2)
    torch.testing.assert_close(descriptors[0], direction)
    assert descriptors[1].norm() < 1


@pytest.mark.parametrize("model, config", [
    ("tiny", DiffSegConfig(resolution=256)),
    ("tiny-xl", DiffSegConfig(method="diffcut", resolution=256, ncut_threshold=1.0)),
])
def test_the_segmenter_describes_every_segment_without_changing_the_masks(model, config):
    plain = DiffSeg.from_pretrained(model, config=config, device="cpu")
    described = DiffSeg(plain.model, config, descriptors=True)
    images = [described.prepare(photo(200, 150, seed=seed)) for seed in (1, 2)]
    results = described.label_batch_scored(images, described.forward_batch(images, 2))
    for image, result, labels in zip(images, results, plain.segment_prepared(images, 2)):
        assert torch.equal(result.labels, labels)
        width = described.forward_batch([image], 2)[0].features.shape[-1]
        assert result.descriptors.dtype == torch.float16
        assert result.descriptors.shape == (int(labels.max()) + 1, width)
        # Means of unit vectors: at most 1 long, and not zero for a segment that has pixels.
        norms = result.descriptors.float().norm(dim=1)
        assert bool(((norms > 0) & (norms <= 1 + 1e-3)).all())
