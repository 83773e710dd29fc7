"""Decoding and resizing real image files."""

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffseg import DiffSegConfig
from diffseg.preprocess import ImageError, labeled_view, prepare, prepare_label, processing_size
from diffseg.visualize import to_image
from synthetic.photos import photo

WHOLE, CENTER = DiffSegConfig(), DiffSegConfig(crop="center")


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("size, expected", [
    ((512, 512), (512, 512)), ((333, 517), (320, 512)), ((4000, 3000), (512, 384)),
    ((10, 5000), (64, 512)), ((100, 60), (512, 320)),
])
def test_processing_size_keeps_aspect_on_multiples_of_64(size, expected):
    assert processing_size(*size, 512) == expected


def test_whole_image_mode_returns_the_original_size(tmp_path):
    path = tmp_path / "odd.png"
    photo(333, 517).save(path)
    prepared = prepare(path, WHOLE)
    assert prepared.pixels.shape == (3, 512, 320)
    assert prepared.mask_size == (517, 333)
    assert prepared.name == str(path)
    assert -1.0 <= prepared.pixels.min() and prepared.pixels.max() <= 1.0


def test_center_mode_is_the_papers_square():
    prepared = prepare(photo(640, 480), CENTER)
    assert prepared.pixels.shape == (3, 512, 512) and prepared.mask_size == (512, 512)


def test_center_crop_takes_the_middle():
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, 100:200] = 255  # the central square is white, the sides black
    prepared = prepare(Image.fromarray(array), DiffSegConfig(crop="center", resolution=64))
    assert prepared.pixels.min() == 1.0


def test_exif_orientation_is_applied(tmp_path):
    image = photo(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    prepared = prepare(encoded(image, "JPEG", exif=exif.tobytes()), WHOLE)
    assert prepared.mask_size == (120, 80)  # displayed 80 wide, 120 high
    assert prepared.pixels.shape == (3, 512, 320)


def test_large_jpegs_are_decoded_reduced_but_masked_at_full_size():
    prepared = prepare(encoded(photo(2400, 1800), "JPEG"), WHOLE)
    assert prepared.mask_size == (1800, 2400) and prepared.pixels.shape == (3, 384, 512)


def test_center_crop_of_a_reduced_jpeg_is_placed_on_the_full_image():
    array = np.zeros((1800, 2400, 3), dtype=np.uint8)
    array[:, 300:2100] = 255  # the central 1800 x 1800 square is white, the sides black
    prepared = prepare(encoded(Image.fromarray(array), "JPEG", quality=95), DiffSegConfig(crop="center", resolution=64))
    assert prepared.original_size == (1800, 2400) and prepared.mask_size == (64, 64)
    assert prepared.pixels[:, :, 1:-1].min() > 0.9  # white up to the edges of the crop


def rotated(width: int, height: int) -> tuple[bytes, np.ndarray]:
    """A PNG stored `width x height` with EXIF orientation 6, and the pixels it shows (turned 90 degrees
    clockwise: `height` wide, `width` high)."""
    stored = photo(width, height)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stored, "PNG", exif=exif.tobytes()), np.rot90(np.asarray(stored), k=-1)


def test_the_labeled_view_is_the_oriented_photo_at_the_mask_size():
    data, shown = rotated(120, 80)
    view = labeled_view(data, WHOLE)
    assert view.mode == "RGB" and view.size == (80, 120) == prepare(data, WHOLE).mask_size[::-1]
    assert np.array_equal(np.asarray(view), shown)


def test_the_labeled_view_of_center_mode_is_the_central_square_the_model_saw():
    data, shown = rotated(120, 80)  # shown 80 wide, 120 high: the central square is rows 20..99
    config = DiffSegConfig(crop="center", resolution=64)
    view = labeled_view(data, config)
    square = Image.fromarray(np.ascontiguousarray(shown[20:100])).resize((64, 64), Image.Resampling.BILINEAR)
    assert view.size == (64, 64) and np.array_equal(np.asarray(view), np.asarray(square))
    assert np.array_equal(np.asarray(view), np.asarray(to_image(prepare(data, config).pixels)))


def test_the_labeled_view_of_a_large_jpeg_is_not_reduced():
    data = encoded(photo(2400, 1800), "JPEG")
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.array_equal(np.asarray(labeled_view(data, WHOLE)), np.asarray(full))
    center = labeled_view(data, DiffSegConfig(crop="center", resolution=64))
    expected = full.crop((300, 0, 2100, 1800)).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(center), np.asarray(expected))


def test_the_labeled_view_refuses_what_prepare_refuses():
    with pytest.raises(ValueError, match="^cannot decode image"):
        labeled_view(b"not an image", WHOLE)
    with pytest.raises(ValueError, match="exceeds the limit of 1000000 pixels"):
        labeled_view(encoded(Image.new("L", (2000, 1000)), "PNG"), WHOLE, max_pixels=1_000_000)


def bands(width: int, height: int) -> np.ndarray:
    """Label with one class per column band of 10 pixels."""
    return np.tile(np.arange(width) // 10, (height, 1))


def test_labels_are_cropped_and_resized_like_their_image():
    image = prepare(photo(300, 100), DiffSegConfig(crop="center", resolution=64))
    label = prepare_label(bands(300, 100), image)
    assert label.shape == (64, 64) and label.dtype == np.int64
    assert label[0, 0] == 10 and label[0, -1] == 19  # the central square is columns 100..199
    assert np.array_equal(prepare_label(bands(300, 100), prepare(photo(300, 100), WHOLE)), bands(300, 100))


def test_labels_follow_the_exif_orientation_of_their_image():
    stored = np.zeros((80, 120, 3), dtype=np.uint8)
    stored[:, :60] = 255  # stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the white half ends up on top
    image = prepare(encoded(Image.fromarray(stored), "PNG", exif=exif.tobytes()), DiffSegConfig(resolution=128))
    label = prepare_label(np.where(np.arange(120) < 60, 1, 0)[None, :].repeat(80, axis=0), image)
    assert label.shape == (120, 80) == image.mask_size
    assert (label[:60] == 1).all() and (label[60:] == 0).all()
    assert image.pixels[:, :32].min() > 0.9 and image.pixels[:, -32:].max() < -0.9


def test_a_label_of_another_size_is_refused():
    with pytest.raises(ValueError, match="label of 100x100 pixels does not fit an image of 300x100 pixels"):
        prepare_label(np.zeros((100, 100)), prepare(photo(300, 100), WHOLE, name="x.png"))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_other_modes_become_rgb(mode):
    image = photo(96, 64).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    prepared = prepare(encoded(image, fmt), WHOLE)
    assert prepared.pixels.shape == (3, 320, 512)


def test_sixteen_bit_images_are_scaled_not_clipped():
    array = np.full((64, 64), 65535 // 2, dtype=np.uint16)
    prepared = prepare(encoded(Image.fromarray(array), "PNG"), DiffSegConfig(resolution=64))
    # atol: one 8-bit level (1 / 127.5 ~ 0.0078) but not two: this checks the scaling (32767 -> 127 by / 257,
    # 128 by / 256), not the exact 16-to-8-bit rounding; clipping would give 1.0
    assert torch.allclose(prepared.pixels, torch.full_like(prepared.pixels, 127 / 127.5 - 1), atol=0.01, rtol=0)


@pytest.mark.parametrize("data, reason", [
    (b"", "cannot decode image (empty file)"),
    (b"not an image at all", "cannot decode image (not an image format Pillow reads)"),
    (encoded(photo(64, 64), "PNG")[:200], "cannot decode image (image file is truncated)"),
])
def test_undecodable_files_raise_a_value_error_naming_the_image_and_a_stable_reason(data, reason):
    with pytest.raises(ValueError) as refused:
        prepare(data, WHOLE, name="broken.png")
    assert str(refused.value) == f"broken.png: {reason}", "the same text every run: no object repr in it"


def test_tiny_and_empty_images_are_refused():
    with pytest.raises(ValueError, match="one.png: image of 1x1 pixels is too small"):
        prepare(encoded(Image.new("RGB", (1, 1)), "PNG"), WHOLE, name="one.png")
    with pytest.raises(ValueError, match="too small"):
        prepare(Image.new("RGB", (0, 10)), WHOLE)


def test_decompression_bombs_are_refused_before_decoding():
    bomb = encoded(Image.new("L", (6000, 6000)), "PNG")  # a few KB that decode to 36 megapixels
    with pytest.raises(ValueError, match="exceeds the limit of 1000000 pixels"):
        prepare(bomb, WHOLE, max_pixels=1_000_000)


def test_animated_images_are_refused():
    frames = [photo(32, 32, seed=i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="3 frames"):
        prepare(gif.getvalue(), WHOLE)


def test_unsupported_modes_are_refused():
    with pytest.raises(ValueError, match="unsupported image mode F"):
        prepare(Image.new("F", (32, 32)), WHOLE)


def test_an_unusable_image_raises_an_image_error_with_its_name_and_reason_apart():
    with pytest.raises(ImageError) as refused:
        prepare(encoded(Image.new("RGB", (1, 1)), "PNG"), WHOLE, name="one.png")
    error = refused.value
    assert (error.name, error.reason) == ("one.png", "image of 1x1 pixels is too small (each side needs 8 pixels)")
    assert str(error) == f"one.png: {error.reason}"
    again = pickle.loads(pickle.dumps(error))  # as it crosses processes
    assert (type(again), again.name, again.reason) == (ImageError, error.name, error.reason)
    with pytest.raises(ImageError) as unnamed:
        labeled_view(b"not an image", WHOLE)
    assert unnamed.value.name is None and str(unnamed.value) == unnamed.value.reason
    image = prepare(photo(300, 100), WHOLE, name="wide.png")
    with pytest.raises(ImageError) as misfit:
        prepare_label(np.zeros((100, 100)), image)
    assert (misfit.value.name, misfit.value.reason) == (
        "wide.png", "label of 100x100 pixels does not fit an image of 300x100 pixels")
