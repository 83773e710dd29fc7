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
from .defaults import MAX_PIXELS
from .methods import METHODS

ImageInput = Union[str, os.PathLike, bytes, Image.Image]

MIN_SIDE = 8
"""Images whose shorter side is under this many pixels (less than one finest attention cell) are refused."""

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
"""What `ImageOps.exif_transpose` does for each EXIF orientation value."""
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr") + _SIXTEEN_BIT


class ImageError(ValueError):
    """An image that cannot be used: it cannot be read or decoded, is animated, has an unsupported mode, is too
    small or too large, or (`prepare_label`) its label does not fit it. `str()` is "NAME: reason", or the reason
    alone for an image without a name."""

    def __init__(self, name: str | None, reason: str) -> None:
        """
        Args:
            name: how the caller refers to the image (its path, or the name given); None if it has none.
            reason: why it cannot be used, one line, without the name (what error rows and reports show).
        """
        super().__init__(reason if name is None else f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageError], tuple[str | None, str]]:
        # Rebuilt from both attributes: the default would pass only the message (e.g. across Ray processes).
        return type(self), (self.name, self.reason)


@dataclass
class PreparedImage:
    """One image ready for the model."""

    name: str
    """How errors and outputs refer to the image (its path, or the name given)."""
    pixels: torch.Tensor
    """fp32 `(3, h, w)` in [-1, 1]; h and w multiples of 64."""
    mask_size: tuple[int, int]
    """`(height, width)` of the mask to return: the original size, or the crop size in center mode."""
    original_size: tuple[int, int]
    """`(height, width)` of the whole image, after EXIF orientation."""
    orientation: int = 1
    """EXIF orientation applied to the stored pixels (1: none; see `prepare_label`)."""
    crop_box: tuple[int, int, int] | None = None
    """`(left, top, side)` of the square the pixels come from, in the oriented full-size image (`center_square`);
    None in whole-image mode."""


def prepare(image: ImageInput, config: DiffSegConfig, name: str | None = None,
            max_pixels: int = MAX_PIXELS) -> PreparedImage:
    """Decode `image` (path, encoded bytes or PIL image) and resize it for `config`.

    EXIF orientation is applied; alpha is dropped; palette, grey, CMYK and 16-bit images become 8-bit RGB.
    `crop="none"`: longer side to `config.resolution`, both sides rounded to a multiple of 64, aspect
    kept, mask at the original size. `crop="center"`: the central square resized to resolution x resolution.

    Raises:
        ImageError: named `name`, if the image cannot be decoded, is animated, has an unsupported mode, a side
            under `MIN_SIDE` pixels or more than `max_pixels` pixels.
    """
    name = name or (str(image) if isinstance(image, (str, os.PathLike)) else "<image>")
    try:
        rgb, (width, height), orientation = _decode(image, max_pixels, draft=config.resolution)
    except ImageError as error:
        raise ImageError(name, error.reason) from None
    crop_box = center_square(width, height, config) if config.crop == "center" else None
    if crop_box:
        mask_size = (config.resolution, config.resolution)
        rgb = _square(rgb, width, height, crop_box, config.resolution)
    else:
        mask_size = (height, width)
        rgb = rgb.resize(processing_size(width, height, config.resolution), Image.Resampling.BILINEAR)
    # Scaled in numpy, not torch: torch's elementwise ops start an OpenMP team in the calling thread, and a
    # decoding thread next to the model's own threads would make them contend (3x slower on 2 cores).
    array = np.asarray(rgb, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    pixels = torch.from_numpy(array).permute(2, 0, 1)
    return PreparedImage(name=name, pixels=pixels, mask_size=mask_size, original_size=(height, width),
                         orientation=orientation, crop_box=crop_box)


def labeled_view(image: ImageInput, config: DiffSegConfig, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The photo `prepare` gives the model for `image`, at full quality and at the mask's size, so that its
    pixel (x, y) is the label map's pixel (x, y): 8-bit RGB with EXIF orientation applied; `crop="center"`:
    the central square resized (bilinear) to resolution x resolution, else the whole image at its size.

    Raises:
        ImageError: as `prepare`, without a name.
    """
    rgb, (width, height), _ = _decode(image, max_pixels, draft=None)
    if config.crop != "center":
        return rgb
    return _square(rgb, width, height, center_square(width, height, config), config.resolution)


def prepare_label(label: np.ndarray, image: PreparedImage, size: tuple[int, int] | None = None) -> np.ndarray:
    """A per-pixel class map of `image` as stored (before EXIF orientation), given the geometry `prepare` gave
    the image: oriented the same way and, in center mode, the same central square resized to `size` (default
    the mask size) by nearest neighbour. Returns an int64 `(H, W)` array of that size, so that it lines up with
    the image's label map made at that size.

    Raises:
        ImageError: named as the image, if the label's size is not the image's.
    """
    labels = Image.fromarray(np.asarray(label, dtype=np.int32))
    if image.orientation in _TRANSPOSE:
        labels = labels.transpose(_TRANSPOSE[image.orientation])
    height, width = image.original_size
    if labels.size != (width, height):
        raise ImageError(image.name, f"label of {labels.width}x{labels.height} pixels does not fit an image of "
                                     f"{width}x{height} pixels")
    size = tuple(size or image.mask_size)
    if image.crop_box:
        left, top, side = image.crop_box
        labels = labels.resize(size[::-1], Image.Resampling.NEAREST, box=(left, top, left + side, top + side))
    elif size != image.original_size:
        labels = labels.resize(size[::-1], Image.Resampling.NEAREST)
    return np.asarray(labels, dtype=np.int64)


def center_square(width: int, height: int, config: DiffSegConfig) -> tuple[int, int, int]:
    """`(left, top, side)` of the central square of a `width x height` image (center-crop mode), as the method's
    official code crops (`Method.center_square`)."""
    return METHODS[config.method].center_square(width, height)


def _square(rgb: Image.Image, width: int, height: int, crop_box: tuple[int, int, int], resolution: int
            ) -> Image.Image:
    """The square `crop_box` of an image of oriented full size `width x height` whose pixels `rgb` the decoder
    may have scaled down, resized (bilinear) to `resolution x resolution`."""
    scale_x, scale_y = rgb.width / width, rgb.height / height
    left, top, side = crop_box
    box = (left * scale_x, top * scale_y, (left + side) * scale_x, (top + side) * scale_y)
    return rgb.crop(tuple(round(v) for v in box)).resize((resolution, resolution), Image.Resampling.BILINEAR)


def processing_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """`(width, height)` the UNet sees in whole-image mode: longer side `resolution`, sides multiples of 64."""
    scale = resolution / max(width, height)
    return (max(64, round(width * scale / 64) * 64), max(64, round(height * scale / 64) * 64))


def _decode(image: ImageInput, max_pixels: int, draft: int | None) -> tuple[Image.Image, tuple[int, int], int]:
    """The image as 8-bit RGB, its oriented full size, and the EXIF orientation that was applied. With
    `draft`, a JPEG decoder may scale the pixels down while keeping both sides at least `draft`.

    Raises:
        ImageError: why the image cannot be used, without a name.
    """
    try:
        if isinstance(image, Image.Image):
            return _read(image, max_pixels, draft)
        source = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                opened = Image.open(source)
            except Image.DecompressionBombWarning as error:
                raise Image.DecompressionBombError(str(error)) from None
        with opened:
            return _read(opened, max_pixels, draft)
    except Image.UnidentifiedImageError:
        # Pillow's own message names the stream by its repr (a memory address), which differs every run.
        what = "empty file" if image == b"" else "not an image format Pillow reads"
        raise ImageError(None, f"cannot decode image ({what})") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        raise ImageError(None, f"cannot decode image ({error})") from None
    except ValueError as error:  # `_read`'s refusals, and decoders' own (a PNG text chunk too large, say)
        raise ImageError(None, str(error)) from None


def _read(opened: Image.Image, max_pixels: int, draft: int | None) -> tuple[Image.Image, tuple[int, int], int]:
    width, height = opened.size
    if width * height > max_pixels:
        raise ValueError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"image of {width}x{height} pixels is too small (each side needs {MIN_SIDE} pixels)")
    if getattr(opened, "n_frames", 1) > 1:
        raise ValueError(f"animated or multi-page image ({opened.n_frames} frames) is not supported")
    if opened.mode not in _CONVERTIBLE:
        raise ValueError(f"unsupported image mode {opened.mode}")
    orientation = opened.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if draft and opened.format == "JPEG":
        # Let the decoder scale down by up to 8x while keeping both sides at least `draft`.
        opened.draft(opened.mode, (draft, draft))
    opened.load()
    return _to_rgb(ImageOps.exif_transpose(opened)), (width, height), orientation


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(values / 257.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")
