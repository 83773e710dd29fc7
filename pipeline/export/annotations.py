"""Segment annotations made from a row's label map: COCO RLE, box, area, a point inside, and the filters that
choose which segments are exported.

A row's `segments` entries are dicts with `id` (the label in the mask), `area`, `bbox` and, in outputs labeled
since scores exist, `stability` and `score` (floats in [0, 1]); older outputs lack those two keys, so they are
read with `.get()` and exported as null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as rle_codec
from scipy.ndimage import distance_transform_edt

from ..store.dataset import decode_mask

SCORES = ("score", "stability")
"""The per-segment scores (absent from outputs labeled before they existed)."""


class ExportError(ValueError):
    """The export cannot run as asked; the message says why in one line."""


class Unusable(ValueError):
    """A row that cannot be exported (its mask does not decode, its photo is gone); the message says why in one
    line. The row is reported and skipped."""


@dataclass(frozen=True)
class Filters:
    """Which segments are annotated: at least `min_area` pixels and, when given, a score and stability at least
    `min_score` and `min_stability`. A segment whose score is null fails a filter on it."""

    min_area: int = 0
    min_score: float | None = None
    min_stability: float | None = None

    def active(self) -> bool:
        """Whether any filter is set."""
        return bool(self.min_area) or self.min_score is not None or self.min_stability is not None

    def scores_read(self) -> list[str]:
        """The score fields these filters need."""
        return [name for name, bound in zip(SCORES, (self.min_score, self.min_stability)) if bound is not None]

    def keeps(self, segment: dict[str, Any]) -> bool:
        if segment["area"] < self.min_area:
            return False
        return all(segment.get(name) is not None and segment[name] >= bound
                   for name, bound in zip(SCORES, (self.min_score, self.min_stability)) if bound is not None)


def check_scores(fields: set[str], filters: Filters) -> None:
    """Raise `ExportError` when `filters` read a score that the output's segments (with `fields`) do not have."""
    missing = [name for name in filters.scores_read() if name not in fields]
    if missing:
        flags = " and ".join(f"--min-{name}" for name in missing)
        raise ExportError(f"this output was labeled before scores existed; relabel to use {flags}")


def scores(segment: dict[str, Any]) -> dict[str, float | None]:
    """`score` and `stability` of `segment`, rounded to 6 decimals (they are float32), None when absent."""
    return {name: None if segment.get(name) is None else round(float(segment[name]), 6) for name in SCORES}


def row_labels(row: dict[str, Any]) -> np.ndarray:
    """The row's `(H, W)` int64 label map; raises `Unusable` if its mask does not decode."""
    try:
        return decode_mask(row["mask"])
    except (OSError, TypeError) as error:
        raise Unusable(f"mask does not decode ({error})") from None


def annotate(labels: np.ndarray, segments: list[dict[str, Any]], filters: Filters,
             points: bool = False) -> list[dict[str, Any]]:
    """One annotation per segment of the `(H, W)` label map `labels` that `filters` keep, in the row's order:
    `segment_id` (its label), the geometry of `encode_segment`, the `scores` and, with `points`, `point` (see
    `inner_point`). A listed label absent from the mask (data that does not agree with itself) is left out."""
    annotations = []
    for segment in segments:
        if not filters.keeps(segment):
            continue
        geometry = encode_segment(labels, segment["id"])
        if geometry["area"]:  # a listed label that is not in the mask has nothing to annotate
            point = {"point": inner_point(labels, segment["id"], geometry["bbox"])} if points else {}
            annotations.append({"segment_id": segment["id"], **geometry, **scores(segment), **point})
    return annotations


def encode_segment(labels: np.ndarray, segment_id: int) -> dict[str, Any]:
    """The COCO annotation geometry of label `segment_id` in the `(H, W)` label map `labels`: `segmentation`
    (compressed RLE, `{"size": [H, W], "counts": str}`), `area` (pixels) and `bbox` (`[x, y, w, h]`, pixels)."""
    binary = np.asfortranarray(labels == segment_id, dtype=np.uint8)
    rle = rle_codec.encode(binary)
    area, bbox = int(rle_codec.area(rle)), [int(v) for v in rle_codec.toBbox(rle)]
    return {"segmentation": {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": area, "bbox": bbox}


def inner_point(labels: np.ndarray, segment_id: int, bbox: list[int]) -> list[int]:
    """`[x, y]` of the pixel of label `segment_id` farthest from the segment's boundary (the image's edge counts
    as boundary; ties go to the first in row-major order): a point inside even a ring or a C shape. Only the
    segment's `bbox` (`[x, y, w, h]`) is looked at."""
    x, y, width, height = bbox
    window = np.pad(labels[y:y + height, x:x + width] == segment_id, 1)  # zeros around: the box edge is outside
    distance = distance_transform_edt(window)
    row, column = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [int(x + column - 1), int(y + row - 1)]
