"""The export formats, one `Format` a line in `FORMATS`: everything `jobs/export.py` needs to offer a format (its
name, its line in --help, which flags and which outputs it takes) and where its exporter is.

Adding a format is a module here whose class follows `rows.Exporter`, and its line in `FORMATS`. Exporters are
named, not imported: they bring torch, pyarrow or PIL with them, and the command's --help and flag errors must
answer before any of that is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .rows import Exporter, Settings


@dataclass(frozen=True)
class Format:
    """One export format, as the command line offers it."""

    name: str
    """The value of --format."""
    description: str
    """What it writes, one line (wrapped in --help)."""
    exporter: str
    """`MODULE:CLASS`, its `rows.Exporter` in `pipeline.export.MODULE`."""
    per_segment: bool
    """Made of each segment's annotation (coco, sa1b), so it refuses pseudo-class outputs (`jobs/cluster.py`):
    their masks hold classes, with no per-image segments to annotate (`rows.settings`)."""
    filters: bool
    """The segment filters (--min-area, --min-score, --min-stability) choose what it annotates; a format without
    annotations refuses them rather than ignore them."""
    sharded: bool
    """Writes --shard-size images per file."""

    def load(self) -> Callable[[Settings], Exporter]:
        """The exporter class, its module imported now."""
        module, name = self.exporter.split(":")
        return getattr(importlib.import_module(f".{module}", __package__), name)


FORMATS = (
    Format("png", "NAME.mask.png (the label map as stored) and NAME.overlay.png (the photo as the job labeled it "
           "under the colored segments; the segments alone when the photo cannot be read any more, counted)",
           "png:PngExporter", per_segment=False, filters=False, sharded=False),
    Format("coco", 'DIR/annotations.json: COCO instances, one category "segment", RLE masks, score and stability',
           "coco:CocoExporter", per_segment=True, filters=True, sharded=False),
    Format("sa1b", "NAME.json per image in the SA-1B layout (RLE, predicted_iou, stability_score, point_coords)",
           "sa1b:Sa1bExporter", per_segment=True, filters=True, sharded=False),
    Format("webdataset", "DIR/shard-000000.tar, ...: KEY.jpg (or .png/.webp), KEY.mask.png, KEY.json per image",
           "webdataset:WebDatasetExporter", per_segment=False, filters=True, sharded=True),
    Format("hf", "DIR/data/train-00000-of-0000N.parquet, ...: Hugging Face datasets (load_dataset(DIR)), image_id, "
           "image and mask (datasets.Image), segments", "hf:HfExporter", per_segment=False, filters=True,
           sharded=True),
)
"""In the order --help lists them."""


def format_named(name: str) -> Format:
    """The format whose --format value is `name` (one of `FORMATS`: the command line has checked it)."""
    return next(chosen for chosen in FORMATS if chosen.name == name)
