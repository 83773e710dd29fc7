"""`png`: every mask as image files, to look at them.

`NAME.mask.png` is the label map as stored; `NAME.overlay.png` is the photo as the job labeled it (after EXIF
orientation and, in center-crop mode, cropped the same way) blended half and half with the colored segments,
or the colored segments alone when the photo cannot be read any more (counted in the last line). NAME is the
image id as a safe path under the folder (`diffseg.filenames.FileNames`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from diffseg.filenames import FileNames
from diffseg.visualize import FILE_SUFFIXES, colorize, overlay

from ..display.photos import labeled_photo
from .annotations import row_labels
from .rows import Settings, renamed


@dataclass(frozen=True)
class Pictures:
    """One row's files, ready to write."""

    image_id: str
    mask: bytes
    overlay: Image.Image
    without_photo: str | None
    """Why the overlay has no photo, or None."""


class PngExporter:
    columns = ("source_uri", "mask")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = FileNames(settings.out, FILE_SUFFIXES)
        self.without_photo: list[str] = []
        self.written = 0

    def convert(self, number: int, row: dict[str, Any]) -> Pictures:
        labels = torch.from_numpy(row_labels(row))
        try:
            photo = labeled_photo(row["source_uri"], tuple(labels.shape), self.settings.config,
                                  self.settings.storage_options, self.settings.columns)
        except ValueError as error:
            return Pictures(row["image_id"], row["mask"], colorize(labels), str(error))
        return Pictures(row["image_id"], row["mask"], overlay(photo, labels), None)

    def write(self, pictures: Pictures) -> None:
        stem = self.names.claim(pictures.image_id)
        stem.parent.mkdir(parents=True, exist_ok=True)
        mask_file, overlay_file = (stem.with_name(stem.name + suffix) for suffix in FILE_SUFFIXES)
        mask_file.write_bytes(pictures.mask)
        pictures.overlay.save(overlay_file)
        self.written += 1
        if pictures.without_photo:
            self.without_photo.append(f"{pictures.image_id}: {pictures.without_photo}")

    def close(self) -> str:
        parts = [f"{self.written} mask(s) written to {self.settings.out} as NAME.mask.png and NAME.overlay.png"]
        if self.names.renamed:
            parts.append(renamed(self.names.renamed))
        if self.without_photo:
            # repr: ids and source names come from the data and may hold control characters
            parts.append(f"{len(self.without_photo)} overlay(s) without photo: source unreadable "
                         f"(first: {self.without_photo[0]!r})")
        return "; ".join(parts)
