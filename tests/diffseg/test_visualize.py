import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from diffseg.visualize import label_image, label_png, overlay, palette, to_image


def roundtrip(image: Image.Image) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def test_up_to_256_labels_are_an_8_bit_png():
    labels = torch.arange(256).reshape(16, 16)
    image = label_image(labels)
    assert image.mode == "L"
    assert np.array_equal(roundtrip(image), labels.numpy())


def test_more_labels_are_a_16_bit_png():
    labels = torch.arange(300 * 2).reshape(20, 30) % 300
    image = label_image(labels)
    assert image.mode.startswith("I;16")
    assert np.array_equal(roundtrip(image).astype(np.int64), labels.numpy())


def test_palette_colors_are_stable_and_distinct():
    colors = palette(40)
    assert colors.shape == (40, 3) and colors.dtype == np.uint8
    assert np.array_equal(colors, palette(40)) and np.array_equal(colors[:10], palette(10))
    assert len({tuple(c) for c in colors}) == 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_model_pixels_become_the_rgb_image_they_encode(dtype):
    pixels = torch.tensor([[[-1.0, 1.0]], [[0.0, 1.0]], [[1.0, -1.0]]], dtype=dtype)  # (3, 1, 2)
    image = to_image(pixels)
    assert image.mode == "RGB" and image.size == (2, 1)
    assert np.asarray(image).tolist() == [[[0, 128, 255], [255, 255, 0]]]


def test_overlay_blends_the_label_colors_at_the_image_size():
    image = to_image(torch.full((3, 8, 12), -1.0))  # black
    labels = torch.zeros(4, 6, dtype=torch.int64)
    labels[:, 3:] = 1
    blended = np.asarray(overlay(image, labels, alpha=1.0))
    assert blended.shape == (8, 12, 3)
    assert np.array_equal(blended[0, 0], palette(2)[0]) and np.array_equal(blended[0, 11], palette(2)[1])


def test_label_png_decodes_to_the_labels():
    labels = torch.arange(12).reshape(3, 4)
    decoded = np.asarray(Image.open(io.BytesIO(label_png(labels))))
    assert np.array_equal(decoded, labels.numpy())


FITTING = [(dtype, count) for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)
           for count in (1, 20, 256, 300, 65536) if count <= torch.iinfo(dtype).max + 1]
"""Label dtypes with label counts they can hold: 8-bit PNGs up to 256 labels, 16-bit beyond."""


@pytest.mark.parametrize(("dtype", "count"), FITTING)
def test_label_png_of_any_integer_dtype_decodes_to_the_same_labels(dtype, count):
    generator = torch.Generator().manual_seed(count)
    coarse = torch.randint(0, count, (9, 13), generator=generator)
    coarse[0, 0] = count - 1
    labels = coarse.repeat_interleave(7, 0).repeat_interleave(5, 1).to(dtype)  # runs, like a segmentation
    for given in (labels, labels.numpy(), labels.numpy().T, labels[:1], labels[:, :1]):
        png = label_png(given)
        with Image.open(io.BytesIO(png)) as image:
            assert image.mode == ("L" if count <= 256 else "I;16")
            assert np.array_equal(np.asarray(image), np.asarray(given))
            assert np.array_equal(np.asarray(image), np.asarray(label_image(given)))


def test_label_png_is_a_well_formed_png():
    png = label_png(torch.arange(300).reshape(15, 20))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position, kinds = 8, []
    while position < len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        data, crc = png[position + 8:position + 8 + length], png[position + 8 + length:position + 12 + length]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + data)
        kinds.append(kind)
        position += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", png[16:29]) == (20, 15, 16, 0, 0, 0, 0)  # 16-bit greyscale


@pytest.mark.parametrize("bad", [torch.tensor([[-1, 2]]), torch.tensor([[70000]]), torch.zeros(2, 2),
                                 torch.zeros(2, 2, 2, dtype=torch.uint8)])
def test_labels_that_are_not_an_image_are_refused(bad):
    with pytest.raises(ValueError):
        label_png(bad)
    with pytest.raises(ValueError):
        label_image(bad)
