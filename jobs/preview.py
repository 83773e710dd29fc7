"""Write a browsable HTML page of a labeling job's output: a summary of the run and a sample of masks.

    python jobs/preview.py out/demo/tiny --out out/preview
    python jobs/preview.py s3://bucket/masks/run-1/ --out preview --sample 48

The page (DIR/index.html, self-contained: open it in any browser) shows the image counts, the error rate
and the reasons, a histogram of segments per image, then for a sample of images spread evenly over the
output the photo with its colored mask, its segment count and provenance, and every failed image with its
error. Exit status: 0 written, 2 bad arguments or an output that cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from diffseg.arguments import OneLineParser  # noqa: E402
from pipeline.store.location import Location, StorageError, parse_storage_options  # noqa: E402
from pipeline.viewing.preview import overview, write_preview  # noqa: E402

OUTPUT_ADVICE = "give the folder of a labeling job's output"
OUT_ADVICE = "give a folder (new or empty)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="jobs/preview.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="fsspec URL of a labeling job's output")
    parser.add_argument("--out", required=True, help="local folder for index.html")
    parser.add_argument("--sample", type=int, default=24, help="images shown with their masks (default 24)")
    parser.add_argument("--storage-options", default=None, help="JSON object of fsspec options")
    args = parser.parse_args(argv)
    try:
        if args.sample < 0:
            raise ValueError(f"--sample must be at least 0, got {args.sample}")
        location = Location(args.output, parse_storage_options(args.storage_options))
        location.check_folder("", OUTPUT_ADVICE)
        Location(args.out).check_folder("--out", OUT_ADVICE)
        view = overview(location, args.sample)
        page = write_preview(view, args.out)
    except (ValueError, StorageError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{view.images} image(s), {len(view.failed)} failed, {len(view.shown)} shown: {page}", file=sys.stderr)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
