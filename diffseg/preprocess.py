"""Image decoding and resizing to the UNet's input: any image in, `(3, h, w)` pixels in [-1, 1] out."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import DiffSegConfig

ImageInput = Union[str, os.PathLike, bytes, Image.Image]

# Default decompression-bomb guard: 8,192 x 8,192 = 67 megapixels. A bomb (a small file that decodes
# to gigabytes) is refused from its header, before any pixel is decoded.
MAX_PIXELS = 8192 * 8192
MIN_SIDE = 8
"""Images whose shorter side is under this many pixels (less than one finest attention cell) are refused."""

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr") + _SIXTEEN_BIT


@dataclass
class PreparedImage:
    """One image ready for the model."""

    name: str
    """How errors and outputs refer to the image (its path, or the name given)."""
    pixels: torch.Tensor
    """fp32 `(3, h, w)` in [-1, 1]; h and w multiples of 64."""
    mask_size: tuple[int, int]
    """`(height, width)` of the mask to return: the original size, or the crop size in center mode."""


def prepare(image: ImageInput, config: DiffSegConfig, name: str | None = None,
            max_pixels: int = MAX_PIXELS) -> PreparedImage:
    """Decode `image` (path, encoded bytes or PIL image) and resize it for `config`.

    EXIF orientation is applied; alpha is dropped; palette, grey, CMYK and 16-bit images become 8-bit RGB.
    `crop="none"`: longer side to `config.resolution`, both sides rounded to a multiple of 64, aspect
    kept, mask at the original size. `crop="center"`: the central square resized to resolution x resolution.

    Raises:
        ValueError: naming the image, if it cannot be decoded, is animated, has an unsupported mode, a side
            under `MIN_SIDE` pixels or more than `max_pixels` pixels.
    """
    name = name or (str(image) if isinstance(image, (str, os.PathLike)) else "<image>")
    try:
        rgb, (width, height) = _decode(image, config.resolution, max_pixels)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        raise ValueError(f"{name}: cannot decode image ({error})") from None
    if config.crop == "center":
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
        size = (config.resolution, config.resolution)
        mask_size = size
    else:
        size = processing_size(width, height, config.resolution)
        mask_size = (height, width)
    rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    # Scaled in numpy, not torch: torch's elementwise ops start an OpenMP team in the calling thread, and a
    # decoding thread next to the model's own threads would make them contend (3x slower on 2 cores).
    array = np.asarray(rgb, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    return PreparedImage(name=name, pixels=pixels, mask_size=mask_size)


def processing_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """`(width, height)` the UNet sees in whole-image mode: longer side `resolution`, sides multiples of 64."""
    scale = resolution / max(width, height)
    return (max(64, round(width * scale / 64) * 64), max(64, round(height * scale / 64) * 64))


def _decode(image: ImageInput, resolution: int, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """The image as 8-bit RGB (possibly already reduced by the JPEG decoder), and its oriented full size."""
    if isinstance(image, Image.Image):
        return _read(image, resolution, max_pixels)
    source = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(source)
        except Image.DecompressionBombWarning as error:
            raise Image.DecompressionBombError(str(error)) from None
    with opened:
        return _read(opened, resolution, max_pixels)


def _read(opened: Image.Image, resolution: int, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    width, height = opened.size
    if width * height > max_pixels:
        raise ValueError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"image of {width}x{height} pixels is too small (each side needs {MIN_SIDE} pixels)")
    if getattr(opened, "n_frames", 1) > 1:
        raise ValueError(f"animated or multi-page image ({opened.n_frames} frames) is not supported")
    if opened.mode not in _CONVERTIBLE:
        raise ValueError(f"unsupported image mode {opened.mode}")
    if opened.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    if opened.format == "JPEG":
        # Let the decoder scale down by up to 8x while keeping both sides at least `resolution`.
        opened.draft(opened.mode, (resolution, resolution))
    opened.load()
    return _to_rgb(ImageOps.exif_transpose(opened)), (width, height)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")
