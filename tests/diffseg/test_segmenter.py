"""DiffSeg end to end with the built-in tiny model."""

import pytest
import torch

from diffseg import DiffSeg, DiffSegConfig
from tests.conftest import photo


def test_masks_have_each_images_original_size(tiny, tmp_path):
    path = tmp_path / "odd.png"
    photo(333, 517, seed=1).save(path)
    masks = tiny.segment([path, photo(200, 120, seed=2)])
    assert [tuple(m.shape) for m in masks] == [(517, 333), (120, 200)]
    assert all(m.dtype == torch.int64 and m.min() == 0 for m in masks)
    assert int(masks[0].max()) > 0  # the tiny model's sharpened attention gives several segments


def test_center_mode_returns_the_square():
    segmenter = DiffSeg.from_pretrained("tiny", config=DiffSegConfig(crop="center", resolution=128))
    (mask,) = segmenter.segment([photo(333, 517)])
    assert mask.shape == (128, 128)


def test_a_bad_image_is_refused_by_name(tiny):
    with pytest.raises(ValueError, match="^tiny.png: image of 1x1"):
        tiny.prepare(photo(1, 1), name="tiny.png")


def test_results_do_not_depend_on_batch_companions_or_order(tiny):
    a, b, c = photo(192, 128, seed=3), photo(192, 128, seed=4), photo(128, 192, seed=5)
    alone = tiny.segment([a], batch_size=2)[0]
    assert int(alone.max()) > 1
    for images, index in [([a, b], 0), ([b, a], 1), ([c, b, a], 2), ([b, c, a, b], 2)]:
        assert torch.equal(tiny.segment(images, batch_size=2)[index], alone)


def test_results_are_deterministic(tiny):
    image = photo(160, 96, seed=6)
    assert torch.equal(tiny.segment([image])[0], tiny.segment([image])[0])


def test_images_are_batched_by_processing_size(tiny, monkeypatch):
    shapes = []
    original = tiny.attention
    monkeypatch.setattr(tiny, "attention", lambda pixels: shapes.append(tuple(pixels.shape)) or original(pixels))
    images = [photo(192, 128, seed=i) for i in range(3)] + [photo(128, 192, seed=9)]
    masks = tiny.segment(images, batch_size=2)
    assert sorted(shapes) == [(2, 3, 320, 512)] * 2 + [(2, 3, 512, 320)]
    assert [tuple(m.shape) for m in masks] == [(128, 192)] * 3 + [(192, 128)]


def test_provenance_names_model_settings_device_and_dtype(tiny):
    info = tiny.info
    assert info["config"] == DiffSegConfig().to_dict()
    assert info["config_hash"] == DiffSegConfig().config_hash()
    assert (info["device"], info["dtype"]) == ("cpu", "float32")


def test_bfloat16_runs_with_fp32_attention():
    segmenter = DiffSeg.from_pretrained("tiny", dtype=torch.bfloat16)
    maps = segmenter.attention(torch.zeros(1, 3, 64, 64))
    assert all(m.dtype == torch.float32 for m in maps)
    (mask,) = segmenter.segment([photo(80, 64)])
    assert mask.shape == (64, 80)


def test_segmenters_built_on_one_model_share_its_capture(tiny):
    other = DiffSeg(tiny.model, DiffSegConfig(kl_threshold=0.5))
    image = photo(128, 96, seed=7)
    assert other.capture is tiny.capture
    assert tiny.segment([image])[0].shape == other.segment([image])[0].shape == (96, 128)
