"""DiffSeg end to end with the built-in tiny model."""

import pytest
import torch

from diffseg import DiffSeg, DiffSegConfig
from synthetic.photos import photo


def test_masks_have_each_images_original_size(tiny, tmp_path):
    path = tmp_path / "odd.png"
    photo(333, 517, seed=1).save(path)
    masks = tiny.segment([path, photo(200, 120, seed=2)])
    assert [tuple(m.shape) for m in masks] == [(517, 333), (120, 200)]
    assert all(m.dtype == torch.uint8 and m.min() == 0 for m in masks)
    assert int(masks[0].max()) > 0  # the tiny model's sharpened attention gives several segments


def test_center_mode_returns_the_square():
    segmenter = DiffSeg.from_pretrained("tiny", config=DiffSegConfig(crop="center", resolution=128), device="cpu")
    (mask,) = segmenter.segment([photo(333, 517)])
    assert mask.shape == (128, 128)


def test_a_bad_image_is_refused_by_name(tiny):
    with pytest.raises(ValueError, match="^tiny.png: image of 1x1"):
        tiny.prepare(photo(1, 1), name="tiny.png")


def test_results_do_not_depend_on_batch_companions_or_order(tiny):
    a, b, c, d = photo(192, 128, seed=3), photo(192, 128, seed=4), photo(128, 192, seed=5), photo(192, 128, seed=6)
    first = tiny.segment([a], batch_size=2)[0]  # padded: [a, a]
    second = tiny.segment([d, a], batch_size=2)[1]
    assert int(first.max()) > 1
    # Exact at the same row of a batch: short batches are padded, so every forward has the same shape and runs the
    # same kernels, and a row's values never meet another row's. (Another row may round differently: some BLAS
    # kernels, e.g. MKL's SSE4.2 ones, treat the rows of a small matrix product differently; see the next test.)
    for images, index, alone in [([a, b], 0, first), ([b, a], 1, second), ([c, b, a], 2, second),
                                 ([b, c, a, b], 2, second)]:
        assert torch.equal(tiny.segment(images, batch_size=2)[index], alone)


def test_an_images_attention_at_another_row_of_a_batch_differs_by_rounding_only(tiny):
    a, b = (tiny.prepare(photo(192, 128, seed=seed)).pixels for seed in (3, 4))
    for first, second in zip(tiny.attention(torch.stack([a, b])), tiny.attention(torch.stack([b, a]))):
        # Every query row is a distribution over the keys; compare rows by their L1 distance (at most 2).
        moved = (first[0] - second[1]).abs().sum(dim=(-2, -1))
        other = (first[0] - second[0]).abs().sum(dim=(-2, -1))
        # Not a worst-case bound (rounding reaching the maps through the whole UNet has no closed form): 0.01
        # sits 10x above the largest rounding seen (9e-4, rows of a batch rounded apart by MKL's SSE4.2 kernels)
        # and 100x below the distance to another image's rows (over 1.2 for b's), which must stay far above it.
        tolerance = 0.01
        assert float(moved.max()) <= tolerance and float(other.min()) > 10 * tolerance


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
    segmenter = DiffSeg.from_pretrained("tiny", device="cpu", dtype=torch.bfloat16)
    maps = segmenter.attention(torch.zeros(1, 3, 64, 64))
    assert all(m.dtype == torch.float32 for m in maps)
    (mask,) = segmenter.segment([photo(80, 64)])
    assert mask.shape == (64, 80)


def test_segmenters_built_on_one_model_share_its_capture(tiny):
    other = DiffSeg(tiny.model, DiffSegConfig(kl_threshold=0.5))
    image = photo(128, 96, seed=7)
    assert other.capture is tiny.capture
    assert tiny.segment([image])[0].shape == other.segment([image])[0].shape == (96, 128)
