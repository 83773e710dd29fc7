"""The photo under a mask: an image read back from the `source_uri` of its row and shown as the job labeled it.

One function for every picture made from a job's output (the viewer, the PNG export), so that they all show
the same photo under the same mask.
"""

from __future__ import annotations

import tarfile
from typing import Any

import pyarrow as pa
from PIL import Image

from diffseg.config import DiffSegConfig
from diffseg.preprocess import labeled_view

from ..store.inputs import ParquetColumns, read_source


def labeled_photo(source_uri: str, mask_shape: tuple[int, int], config: DiffSegConfig,
                  storage_options: dict[str, Any], columns: ParquetColumns) -> Image.Image:
    """The RGB photo at `source_uri` (a file, `TAR#MEMBER` or `PARQUET#ROW`) as the job with `config` and
    Parquet `columns` labeled it: EXIF orientation applied and, in center-crop mode, the same central square,
    at the mask's size, so that its pixel (x, y) is the mask's pixel (x, y). `mask_shape` is `(height, width)`.

    Raises:
        ValueError: one line saying why the photo cannot be shown: the source cannot be read or decoded any
            more, or it is no longer of the mask's size (it changed since it was labeled).
    """
    try:
        data = read_source(source_uri, storage_options, columns)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    except (OSError, tarfile.TarError, pa.ArrowException) as error:
        raise ValueError(f"cannot read {source_uri} ({error})") from None
    photo = labeled_view(data, config)
    if photo.size != mask_shape[::-1]:
        raise ValueError(f"the photo at {source_uri} is {photo.width}x{photo.height} pixels, its mask "
                         f"{mask_shape[1]}x{mask_shape[0]}: it changed since it was labeled")
    return photo
