"""`webdataset`: tar shards of samples for streaming trainers (the `webdataset` package, torchdata, Ray Data).

`shard-000000.tar`, `shard-000001.tar`, ... of `shard_size` samples each, in the output's order. A sample is
three members named `KEY.EXT`:

- `KEY.jpg` / `KEY.png` / `KEY.webp`: the photo whose pixel (x, y) is the mask's pixel (x, y). The source's
  own bytes when they are a JPEG, PNG or WebP stored as labeled (no EXIF turn or flip, no center crop, the
  mask's size); otherwise the photo as the job labeled it (oriented, cropped), encoded as PNG.
- `KEY.mask.png`: the label map, the stored PNG as is (8-bit, 16-bit above 256 segments).
- `KEY.json`: `{"id": image id, "width", "height", "segments": [{"id", "area", "bbox", "score", "stability"}]}`.

KEY is the row's 1-based position in the output, nine digits (`000000042`): webdataset splits a member name
into key and extension at the first dot of its last path component, and ids may hold dots and slashes, so
the id is in `KEY.json`, never in a name. Filters choose the segments listed in `KEY.json`; the mask keeps
every label, so a label missing from the list is one to ignore. A row whose photo cannot be read or decoded
any more, or no longer has the mask's size, is reported and left out. Each shard is written under a hidden
temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from PIL import Image

from diffseg.preprocess import labeled_view

from ..store.inputs import read_source
from .annotations import Unusable, row_labels, scores
from .rows import Settings

AS_STORED = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
"""Photo formats kept as their own bytes, and their member extension."""
_EXIF_ORIENTATION = 0x0112
_TURNED = range(2, 9)
"""EXIF orientations that move pixels (1 is none)."""


@dataclass(frozen=True)
class Sample:
    """One sample's tar members, `(name, bytes)` in order."""

    members: list[tuple[str, bytes]]


class WebDatasetExporter:
    columns = ("source_uri", "mask", "segments")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.out.mkdir(parents=True, exist_ok=True)
        self.shards = 0
        self.samples = 0
        self.tar: tarfile.TarFile | None = None

    def convert(self, number: int, row: dict[str, Any]) -> Sample:
        labels = row_labels(row)
        height, width = labels.shape
        extension, photo = training_photo(row["source_uri"], (height, width), self.settings)
        segments = [{"id": s["id"], "area": s["area"], "bbox": s["bbox"], **scores(s)}
                    for s in row["segments"] or [] if self.settings.filters.keeps(s)]
        meta = {"id": row["image_id"], "width": width, "height": height, "segments": segments}
        key = f"{number:09d}"
        return Sample([(f"{key}.{extension}", photo), (f"{key}.mask.png", row["mask"]),
                       (f"{key}.json", json.dumps(meta).encode())])

    def write(self, sample: Sample) -> None:
        if self.tar is None or self.samples % self.settings.shard_size == 0:
            self._finish_shard()
            self.tar = tarfile.open(self._partial(self.shards), "w", format=tarfile.PAX_FORMAT)
            self.shards += 1
        for name, data in sample.members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same bytes on every run
            self.tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> str:
        self._finish_shard()
        return (f"{self.samples} sample(s) written to {self.settings.out} in {self.shards} shard(s) "
                "shard-NNNNNN.tar")

    def _finish_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            os.replace(self._partial(self.shards - 1), self.settings.out / shard_name(self.shards - 1))
            self.tar = None

    def _partial(self, index: int) -> str:
        return str(self.settings.out / f".{shard_name(index)}.partial")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def training_photo(uri: str, mask_shape: tuple[int, int], settings: Settings) -> tuple[str, bytes]:
    """`(extension, bytes)` of the photo at `uri` aligned with a mask of `mask_shape` (`(height, width)`):
    its own bytes when they are stored as labeled, else the labeled view as PNG (see the module docstring).

    Raises:
        Unusable: the photo cannot be read or decoded, or no longer has the mask's size.
    """
    data = _source(uri, settings)
    try:
        with Image.open(io.BytesIO(data)) as image:
            stored_as_labeled = (settings.config.crop == "none" and image.format in AS_STORED
                                 and image.getexif().get(_EXIF_ORIENTATION, 1) not in _TURNED
                                 and image.size == mask_shape[::-1])
            if stored_as_labeled:
                return AS_STORED[image.format], data
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise Unusable(f"cannot decode the photo at {uri} ({error})") from None
    try:
        photo = labeled_view(data, settings.config)
    except ValueError as error:
        raise Unusable(f"cannot decode the photo at {uri} ({error})") from None
    if photo.size != mask_shape[::-1]:
        raise Unusable(f"the photo at {uri} is {photo.width}x{photo.height} pixels, its mask "
                       f"{mask_shape[1]}x{mask_shape[0]}: it changed since it was labeled")
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _source(uri: str, settings: Settings) -> bytes:
    """The bytes at the row's `source_uri`; raises `Unusable` when they cannot be read any more."""
    try:
        return read_source(uri, settings.storage_options, settings.columns)
    except KeyError as error:
        raise Unusable(str(error.args[0])) from None
    except (OSError, ValueError, tarfile.TarError, pa.ArrowException) as error:
        raise Unusable(f"cannot read {uri} ({error})") from None
