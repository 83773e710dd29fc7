"""Write a labeling job's masks as image files, to look at them.

    python jobs/export.py out/demo --out out/demo-png

For every image labeled ok: NAME.mask.png (the label map, as stored) and NAME.overlay.png (the photo
with colored segments; the colored labels alone when the source image cannot be read). NAME is the
image id. Exit status: 0 done, 2 bad arguments or unreadable output.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from diffseg.cli import OneLineParser  # noqa: E402
from diffseg.visualize import colorize, overlay  # noqa: E402
from pipeline.storage import Location, StorageError, parse_storage_options  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="jobs/export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="fsspec URL of a labeling job's output")
    parser.add_argument("--out", required=True, help="local folder for the PNG files")
    parser.add_argument("--storage-options", default=None, help="JSON object of fsspec options")
    args = parser.parse_args(argv)
    try:
        location = Location(args.output, parse_storage_options(args.storage_options))
        dataset = ds.dataset(location.root, format="parquet", filesystem=location.fs)
        batches = dataset.to_batches(columns=["image_id", "source_uri", "mask", "status"], batch_size=16)
        exported = 0
        for batch in batches:
            for row in batch.to_pylist():
                if row["status"] == "ok":
                    _export(row, Path(args.out), location.storage_options)
                    exported += 1
    except (StorageError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{exported} mask(s) written to {args.out} as NAME.mask.png and NAME.overlay.png", file=sys.stderr)
    return 0


def _export(row: dict, out: Path, storage_options: dict) -> None:
    target = out / row["image_id"].replace("#", "_")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_name(target.name + ".mask.png").write_bytes(row["mask"])
    labels = torch.from_numpy(np.asarray(Image.open(io.BytesIO(row["mask"]))).astype(np.int64))
    try:
        with fsspec.open(row["source_uri"], "rb", **storage_options) as file:
            photo = ImageOps.exif_transpose(Image.open(file)).convert("RGB")
        picture = overlay(photo, labels) if photo.size == (labels.shape[1], labels.shape[0]) else None
    except (OSError, ValueError):
        picture = None
    if picture is None:
        picture = colorize(labels)
    picture.save(target.with_name(target.name + ".overlay.png"))


if __name__ == "__main__":
    sys.exit(main())
