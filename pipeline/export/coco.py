"""`coco`: `annotations.json` in the COCO instances format, class-agnostic, for detection and instance
segmentation trainers (pycocotools, detectron2, mmdetection).

One category, `{"id": 1, "name": "segment"}`. `images`: `id` (the row's 1-based position in the output),
`file_name` (the image id), `width`, `height` (the mask's size). `annotations`: `id` (1, 2, ...), `image_id`,
`category_id` 1, `segmentation` (compressed RLE, `counts` a string), `area`, `bbox` (`[x, y, w, h]`), `iscrowd`
0, and the segment's `score` and `stability` (null for outputs labeled before scores existed). The file is
written as rows come (entries go to two temporary files joined at the end), so memory stays bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from .annotations import annotate, row_labels
from .rows import Settings

FILE = "annotations.json"
CATEGORY = {"id": 1, "name": "segment"}


@dataclass(frozen=True)
class Entries:
    """One row's image entry and its annotations (without their ids)."""

    image: dict[str, Any]
    annotations: list[dict[str, Any]]


class CocoExporter:
    columns = ("mask", "segments")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.out.mkdir(parents=True, exist_ok=True)
        self.images = _JsonList(settings.out)
        self.annotations = _JsonList(settings.out)

    def convert(self, number: int, row: dict[str, Any]) -> Entries:
        labels = row_labels(row)
        height, width = labels.shape
        image = {"id": number, "file_name": row["image_id"], "width": width, "height": height}
        return Entries(image, annotate(labels, row["segments"] or [], self.settings.filters))

    def write(self, entries: Entries) -> None:
        self.images.append(entries.image)
        for found in entries.annotations:
            self.annotations.append({
                "id": self.annotations.count + 1, "image_id": entries.image["id"], "category_id": CATEGORY["id"],
                "segmentation": found["segmentation"], "area": found["area"], "bbox": found["bbox"], "iscrowd": 0,
                "score": found["score"], "stability": found["stability"]})

    def close(self) -> str:
        """Join the entries into `annotations.json`, replacing it in one step."""
        target = self.settings.out / FILE
        with tempfile.NamedTemporaryFile("w", dir=self.settings.out, prefix=f".{FILE}.", delete=False) as joined:
            joined.write(f'{{"categories": [{json.dumps(CATEGORY)}],\n"images": [')
            self.images.copy_to(joined)
            joined.write('],\n"annotations": [')
            self.annotations.copy_to(joined)
            joined.write("]}\n")
        os.replace(joined.name, target)
        return f"{self.images.count} image(s) and {self.annotations.count} annotation(s) written to {target}"


class _JsonList:
    """The entries of a JSON list, written one by one to an anonymous temporary file in `folder`."""

    def __init__(self, folder: os.PathLike) -> None:
        self.file: IO[str] = tempfile.TemporaryFile("w+", dir=folder)
        self.count = 0

    def append(self, entry: dict[str, Any]) -> None:
        self.file.write((",\n" if self.count else "\n") + json.dumps(entry))
        self.count += 1

    def copy_to(self, target: IO[str]) -> None:
        self.file.seek(0)
        shutil.copyfileobj(self.file, target)
        self.file.close()
