"""Write a labeling job's masks as image files, to look at them.

    python jobs/export.py out/demo --out out/demo-png

For every image labeled ok: NAME.mask.png (the label map, as stored) and NAME.overlay.png (the photo as the
job labeled it, that is after EXIF orientation and, in center-crop mode, cropped the same way, blended half
and half with the colored segments; the colored segments alone when the source image cannot be read any
more, which the last line counts). NAME is the image id as a safe path under --out (diffseg.filenames):
'sub/a.jpg' stays 'sub/a.jpg', anything that could leave the folder is escaped ('../x.png' is
'%2E%2E/x.png', 'data.parquet#3' is 'data.parquet%233'), and an id whose files would overwrite another id's
(a duplicate id, ids that differ only in case) is written as NAME~2, NAME~3, ..., counted in the last line.
Exit status: 0 done, 2 bad arguments or unreadable output.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

from diffseg.arguments import OneLineParser  # noqa: E402
from diffseg.config import DiffSegConfig  # noqa: E402
from diffseg.filenames import FileNames  # noqa: E402
from diffseg.visualize import FILE_SUFFIXES, colorize, overlay  # noqa: E402
from pipeline.labeling.output import OutputDataset, decode_mask, manifest_columns, manifest_config  # noqa: E402
from pipeline.labeling.sources import ParquetColumns  # noqa: E402
from pipeline.labeling.storage import Location, StorageError, parse_storage_options  # noqa: E402
from pipeline.viewing.photos import labeled_photo  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="jobs/export.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="fsspec URL of a labeling job's output")
    parser.add_argument("--out", required=True, help="local folder for the PNG files")
    parser.add_argument("--storage-options", default=None, help="JSON object of fsspec options")
    args = parser.parse_args(argv)
    names = FileNames(args.out, FILE_SUFFIXES)
    exported, without_photo = 0, []
    try:
        output = Location(args.output, parse_storage_options(args.storage_options))
        dataset = OutputDataset(output)
        manifest = dataset.manifest()
        config, columns = manifest_config(manifest), manifest_columns(manifest)
        for row in dataset.rows(["image_id", "source_uri", "mask", "status"], batch_size=16):
            if row["status"] == "ok":
                reason = _export(row, names.claim(row["image_id"]), config, output.storage_options, columns)
                exported += 1
                if reason:
                    without_photo.append(f"{row['image_id']}: {reason}")
    except (StorageError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = [f"{exported} mask(s) written to {args.out} as NAME.mask.png and NAME.overlay.png"]
    if names.renamed:
        summary.append(f"{names.renamed} id(s) written as NAME~N so as not to overwrite another id's files")
    if without_photo:
        # repr: ids and source names come from the data and may hold control characters
        summary.append(f"{len(without_photo)} overlay(s) without photo: source unreadable "
                       f"(first: {without_photo[0]!r})")
    print("; ".join(summary), file=sys.stderr)
    return 0


def _export(row: dict[str, Any], target: Path, config: DiffSegConfig, storage_options: dict[str, Any],
            columns: ParquetColumns) -> str | None:
    """Write the row's mask and overlay at `target` (a stem from `FileNames`); returns why the overlay has no
    photo, or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mask_file, overlay_file = (target.with_name(target.name + suffix) for suffix in FILE_SUFFIXES)
    mask_file.write_bytes(row["mask"])
    labels = torch.from_numpy(decode_mask(row["mask"]))
    try:
        photo = labeled_photo(row["source_uri"], tuple(labels.shape), config, storage_options, columns)
    except ValueError as error:
        colorize(labels).save(overlay_file)
        return str(error)
    overlay(photo, labels).save(overlay_file)
    return None


if __name__ == "__main__":
    sys.exit(main())
