import io

import numpy as np
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
