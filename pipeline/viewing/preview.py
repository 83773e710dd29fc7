"""A browsable page of a labeling job's output: a summary of the whole run and a sample of images with masks.

Built from the output alone: its mask Parquet files, its manifest, and the source images its rows point to
(files, WebDataset tar members or Parquet rows). It scales to any output: the summary reads a few small
columns of every row, and only the sampled images' masks and photos are read.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..display.pages import (
    display_size,
    failure_list,
    figure,
    paint,
    resize_nearest,
    segment_colors,
    spread,
    text,
    write_page,
)
from ..display.photos import labeled_photo
from ..store.dataset import FILE, OutputDataset, decode_mask, manifest_columns, manifest_config
from ..store.inputs import ParquetColumns
from ..store.location import Location

FAILED_LISTED = 200
"""Failed images named one by one (the reasons are counted over all of them)."""
PROVENANCE_KEYS = ("model", "revision", "random_weights", "config_hash", "device", "dtype", "diffseg", "git_commit",
                   "run_id", "created")
"""Provenance shown under each sampled image (the page ends with the manifest in full)."""


@dataclass
class Shown:
    """One sampled image: its photo with the colored mask over it (or the colored mask alone)."""

    image_id: str
    source_uri: str
    segments: int
    picture: Image.Image
    note: str
    """"" when the photo is shown, else why only the mask is."""
    provenance: dict[str, Any]


@dataclass
class Overview:
    """What a labeling job's output holds."""

    url: str
    manifest: dict[str, Any]
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """`(image_id, error)` of every image labeled `status=error`."""
    segments: list[int] = field(default_factory=list)
    """Segments of every image labeled ok."""
    shown: list[Shown] = field(default_factory=list)


def overview(location: Location, sample: int = 24) -> Overview:
    """Read the output at `location` and pick `sample` images labeled ok, spread evenly over it.

    Raises:
        StorageError: `location` is not a labeling job's output, or its files cannot be read.
    """
    dataset = OutputDataset(location)
    manifest = dataset.manifest()
    result = Overview(location.uri(""), manifest)
    ok = []
    for position, row in enumerate(dataset.rows(["image_id", "status", "error", "num_segments"])):
        result.images += 1
        if row["status"] == "ok":
            ok.append(position)
            result.segments.append(row["num_segments"])
        else:
            result.failed.append((row["image_id"], row["error"]))
    picked = [ok[i] for i in spread(len(ok), sample)]
    config = manifest_config(manifest)
    provenance: dict[str, dict[str, Any]] = {}
    columns = manifest_columns(manifest)
    for row in dataset.take(picked, ["image_id", "source_uri", "num_segments", "mask", FILE]):
        file = row[FILE]
        if file not in provenance:
            provenance[file] = {key: value for key, value in dataset.provenance(file).items()
                                if key in PROVENANCE_KEYS}
        labels = decode_mask(row["mask"])
        picture, note = _picture(row["source_uri"], labels, config, location.storage_options, columns)
        result.shown.append(Shown(row["image_id"], row["source_uri"], row["num_segments"], picture, note,
                                  {**provenance[file], "file": file}))
    return result


def write_preview(view: Overview, folder: str | Path) -> Path:
    """Write `folder/index.html` for `view`; returns its path."""
    ok = view.images - len(view.failed)
    rate = len(view.failed) / view.images if view.images else 0.0
    return write_page(folder, f"diffseg masks: {view.url}", [
        f"<p>{view.images} image(s): {ok} labeled, {len(view.failed)} failed ({100 * rate:.1f}% errors). "
        f"Showing {len(view.shown)} of the labeled images, spread evenly over the output.</p>",
        _histogram(view.segments), _reasons(view.failed), "<h2>Sample</h2>", "<div class='row'>",
        *(_shown(item) for item in view.shown), "</div>",
        failure_list("Failed images", view.failed, FAILED_LISTED), "<h2>Manifest</h2>",
        f"<pre>{text(json.dumps(view.manifest, indent=2, sort_keys=True))}</pre>",
    ])


def _picture(source_uri: str, labels: np.ndarray, config: Any, storage_options: dict[str, Any],
             columns: ParquetColumns) -> tuple[Image.Image, str]:
    """The photo as the job saw it (orientation, crop) under the colored mask, at display size; or the colored
    mask alone, with the reason, when the photo cannot be read any more."""
    size = display_size(labels.shape)
    colors = segment_colors(labels)
    shown = resize_nearest(labels, size)
    try:
        photo = labeled_photo(source_uri, labels.shape, config, storage_options, columns)
    except ValueError as error:
        return paint(Image.new("RGB", size), shown, colors), f"photo not readable ({error})"
    return paint(photo.resize(size, Image.Resampling.BILINEAR), shown, colors), ""


def _shown(item: Shown) -> str:
    details = ", ".join(f"{key}: {value}" for key, value in item.provenance.items())
    caption = f"{item.image_id}: {item.segments} segment(s)" + (f"; {item.note}" if item.note else "")
    return (f"<div>{figure(item.picture, caption)}<details><summary>provenance</summary>"
            f"<small>{text(item.source_uri)}<br>{text(details)}</small></details></div>")


def _histogram(segments: list[int]) -> str:
    """Segments per labeled image, in at most 20 bins."""
    if not segments:
        return ""
    top = max(segments)
    width = max(1, -(-top // 20))
    counts = Counter((value - 1) // width for value in segments)
    most = max(counts.values())
    rows = []
    for index in range(max(counts) + 1):
        low, high = index * width + 1, (index + 1) * width
        span = str(low) if width == 1 else f"{low}-{high}"
        bar = f"<span class='bar' style='width:{round(300 * counts[index] / most)}px'></span>"
        rows.append(f"<tr><td>{span}</td><td>{counts[index]}</td><td style='text-align:left'>{bar}</td></tr>")
    return (f"<h2>Segments per image</h2><p>median {int(np.median(segments))}, mean {np.mean(segments):.1f}, "
            f"max {top}.</p><table><tr><th>segments</th><th>images</th><th></th></tr>{''.join(rows)}</table>")


def _reasons(failed: list[tuple[str, str]]) -> str:
    if not failed:
        return ""
    # Details in parentheses (a decoder's message, an object address) would make every reason unique.
    reasons = Counter(error.split(" (")[0] for _, error in failed)
    rows = "".join(f"<tr><td>{text(reason)}</td><td>{count}</td></tr>" for reason, count in reasons.most_common(20))
    return f"<h2>Why images failed</h2><table><tr><th>reason</th><th>images</th></tr>{rows}</table>"
