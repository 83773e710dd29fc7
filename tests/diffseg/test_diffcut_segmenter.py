"""DiffCut, and the K-way cut on its features, end to end with the built-in tiny models (SD 1.x and SDXL
layouts)."""

import dataclasses

import pytest
import torch

from diffseg import DiffSeg, DiffSegConfig, segment_from_features
from diffseg.features import feature_layer
from diffseg.preprocess import center_square
from synthetic.photos import photo

SETTINGS = DiffSegConfig(method="diffcut", resolution=256, ncut_threshold=1.0)
"""8 tokens along the longer side; tau 1.0 so that the random-weight features are cut into several segments."""


@pytest.fixture(scope="module", params=[("tiny", "diffcut"), ("tiny-xl", "diffcut"), ("tiny", "kway")],
                ids=lambda param: "-".join(param))
def diffcut(request) -> DiffSeg:
    model, method = request.param
    return DiffSeg.from_pretrained(model, config=dataclasses.replace(SETTINGS, method=method), device="cpu")


def test_masks_have_each_images_original_size(diffcut):
    masks = diffcut.segment([photo(333, 517, seed=1), photo(200, 120, seed=2)])
    assert [tuple(m.shape) for m in masks] == [(517, 333), (120, 200)]
    assert all(m.dtype == torch.uint8 and m.min() == 0 for m in masks)
    assert int(masks[0].max()) > 0


def test_features_are_one_layers_output_on_a_non_square_token_grid(diffcut):
    image = diffcut.prepare(photo(320, 240, seed=3))
    features = diffcut.features(image.pixels[None])
    assert image.pixels.shape[-2:] == (192, 256)
    width = feature_layer(diffcut.model.unet).to_out[0].out_features
    assert features.shape == (1, 6, 8, width)
    labels = segment_from_features(features[0], diffcut.config, image.mask_size)
    assert torch.equal(diffcut.segment([photo(320, 240, seed=3)])[0], labels)


def test_results_do_not_depend_on_batch_companions(diffcut):
    a, b, c = (photo(192, 128, seed=seed) for seed in (4, 5, 6))
    alone = diffcut.segment([a], batch_size=2)[0]  # padded: [a, a]
    # Exact at the same row of a batch: the noise is one tensor shared by the batch, and every forward has the same
    # shape (see `DiffSeg.forward_batch`).
    assert torch.equal(diffcut.segment([a, b], batch_size=2)[0], alone)
    assert torch.equal(diffcut.segment([a, c], batch_size=2)[0], alone)


def test_results_are_deterministic_across_segmenters(diffcut):
    image = photo(160, 96, seed=7)
    again = DiffSeg(diffcut.model, diffcut.config)
    assert torch.equal(diffcut.segment([image])[0], again.segment([image])[0])


def test_the_stock_attention_stays_on(diffcut):
    """DiffCut reads one layer through a hook: no capture processor is installed on the model."""
    processors = {type(p).__name__ for p in diffcut.model.unet.attn_processors.values()}
    assert diffcut.capture is None and not any("Capture" in name for name in processors)


def test_center_mode_crops_as_the_official_code():
    config = DiffSegConfig(method="diffcut", crop="center", resolution=128)
    assert center_square(640, 480, config) == (80, 0, 479)
    assert center_square(480, 643, config) == (0, 82, 479)  # (643 - 479) / 2 = 82
    assert center_square(640, 480, DiffSegConfig(crop="center")) == (80, 0, 480)
    segmenter = DiffSeg.from_pretrained("tiny", config=config, device="cpu")
    (mask,) = segmenter.segment([photo(333, 517)])
    assert mask.shape == (128, 128)


def test_pamr_runs_on_the_images_colours(diffcut):
    refined = DiffSeg(diffcut.model, DiffSegConfig(method="diffcut", resolution=256, ncut_threshold=1.0, pamr=True))
    image = photo(256, 192, seed=8)
    mask = refined.segment([image])[0]
    assert mask.shape == (192, 256)
    scored, = refined.label_batch_scored([refined.prepare(image)], refined.forward_batch([refined.prepare(image)], 1))
    assert torch.equal(scored.labels, mask)


def test_diffseg_runs_on_an_sdxl_layout_model():
    """SDXL-family UNets have self-attention at two resolutions only (1/16 and 1/32 of the pixels)."""
    segmenter = DiffSeg.from_pretrained("tiny-xl", config=DiffSegConfig(resolution=256), device="cpu")
    image = segmenter.prepare(photo(256, 192))
    maps = segmenter.attention(image.pixels[None])
    assert [tuple(m.shape[1:3]) for m in maps] == [(12, 16), (6, 8)]
    (mask,) = segmenter.segment([photo(256, 192)])
    assert mask.shape == (192, 256)
