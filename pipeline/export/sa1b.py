"""`sa1b`: one JSON file per image in the layout of Segment Anything's SA-1B, for SAM-style trainers.

`NAME.json`, NAME the image id as a safe path under the folder (`diffseg.filenames.FileNames`: ids never leave
it; a duplicate id is written as `NAME~2.json`). Each file: `{"image": {"image_id", "width", "height",
"file_name"}, "annotations": [{"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
"point_coords", "crop_box"}]}`: `image_id` is the row's 1-based position in the output, `file_name` the image
id, the size the mask's; `id` is the segment's label in the mask, `segmentation` compressed COCO RLE,
`predicted_iou` and `stability_score` the segment's `score` and `stability` (null for outputs labeled before
scores existed), `point_coords` `[[x, y]]` the pixel of the segment farthest from its boundary (integer column
and row), `crop_box` the whole mask `[0, 0, w, h]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from diffseg.filenames import FileNames

from .annotations import annotate, row_labels
from .rows import Settings, renamed

SUFFIX = ".json"


@dataclass(frozen=True)
class Document:
    """One image's JSON file, ready to write."""

    image_id: str
    text: str


class Sa1bExporter:
    columns = ("mask", "segments")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = FileNames(settings.out, (SUFFIX,))
        self.written = 0

    def convert(self, number: int, row: dict[str, Any]) -> Document:
        labels = row_labels(row)
        height, width = labels.shape
        image = {"image_id": number, "width": width, "height": height, "file_name": row["image_id"]}
        annotations = [{"id": found["segment_id"], "segmentation": found["segmentation"], "bbox": found["bbox"],
                        "area": found["area"], "predicted_iou": found["score"], "stability_score": found["stability"],
                        "point_coords": [found["point"]], "crop_box": [0, 0, width, height]}
                       for found in annotate(labels, row["segments"] or [], self.settings.filters, points=True)]
        return Document(row["image_id"], json.dumps({"image": image, "annotations": annotations}))

    def write(self, document: Document) -> None:
        stem = self.names.claim(document.image_id)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_name(stem.name + SUFFIX).write_text(document.text)
        self.written += 1

    def close(self) -> str:
        parts = [f"{self.written} JSON file(s) written to {self.settings.out} as NAME.json"]
        if self.names.renamed:
            parts.append(renamed(self.names.renamed))
        return "; ".join(parts)
