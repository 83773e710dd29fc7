"""Label maps as images: the label PNG itself and a colored overlay for people to look at."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import torch
from PIL import Image

FILE_SUFFIXES = (".mask.png", ".overlay.png")
"""The files written per image by the CLI and the PNG export: NAME.mask.png (the label map, `label_image`) and
NAME.overlay.png (the photo under the colored segments, `overlay`)."""


def label_image(labels: torch.Tensor) -> Image.Image:
    """The `(H, W)` label map as a single-channel image: 8-bit when labels fit, else 16-bit."""
    array = labels.cpu().numpy()
    if array.min(initial=0) < 0 or array.max(initial=0) >= 2**16:
        raise ValueError("labels must be in 0..65535 to be stored as an image")
    if array.max(initial=0) < 256:
        return Image.fromarray(array.astype(np.uint8))
    return Image.fromarray(array.astype(np.uint16))  # Pillow maps uint16 to mode I;16


def label_png(labels: torch.Tensor) -> bytes:
    """The label map as PNG bytes (see `label_image`); decode with `PIL.Image.open` and `np.asarray`."""
    buffer = io.BytesIO()
    label_image(labels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def palette(count: int) -> np.ndarray:
    """`(count, 3)` uint8 colors, well apart in hue (golden-ratio steps), the same for every call."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    values = [colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * (i % 3 == 2))
              for i, h in enumerate(hues)]
    return (np.array(values).reshape(count, 3) * 255).round().astype(np.uint8)


def overlay(image: Image.Image, labels: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """`image` blended with the colored label map, at the image's size (labels resized nearest)."""
    resized = label_image(labels).resize(image.size, Image.Resampling.NEAREST)
    return Image.blend(image.convert("RGB"), colorize(np.asarray(resized)), alpha)


def colorize(labels: torch.Tensor | np.ndarray) -> Image.Image:
    """The `(H, W)` label map as an RGB image, each label in its `palette` color."""
    array = (labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)).astype(np.int64)
    return Image.fromarray(palette(int(array.max(initial=0)) + 1)[array])


def to_image(pixels: torch.Tensor) -> Image.Image:
    """The RGB image of model input pixels `(3, h, w)` in [-1, 1]."""
    array = ((pixels.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())
