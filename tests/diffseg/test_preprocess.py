"""Decoding and resizing real image files."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import DiffSegConfig
from diffseg.preprocess import prepare, processing_size
from tests.conftest import photo

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


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_other_modes_become_rgb(mode):
    image = photo(96, 64).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    prepared = prepare(encoded(image, fmt), WHOLE)
    assert prepared.pixels.shape == (3, 320, 512)


def test_sixteen_bit_images_are_scaled_not_clipped():
    array = np.full((64, 64), 65535 // 2, dtype=np.uint16)
    prepared = prepare(encoded(Image.fromarray(array), "PNG"), DiffSegConfig(resolution=64))
    assert torch.allclose(prepared.pixels, torch.full_like(prepared.pixels, 127 / 127.5 - 1), atol=0.01)


@pytest.mark.parametrize("data, reason", [
    (b"", "cannot decode"),
    (b"not an image at all", "cannot decode"),
    (encoded(photo(64, 64), "PNG")[:200], "cannot decode"),
])
def test_undecodable_files_raise_a_value_error_naming_the_image(data, reason):
    with pytest.raises(ValueError, match=f"^broken.png: {reason}"):
        prepare(data, WHOLE, name="broken.png")


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
