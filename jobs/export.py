"""Export a labeling job's masks: as image files to look at, or as annotations for training.

    python jobs/export.py out/demo/tiny --out out/demo-png       # after make demo MODEL=tiny
    python jobs/export.py s3://bucket/masks/ --out coco/ --format coco --min-area 64 --min-stability 0.8

Formats (docs/exports.md):
{formats}

NAME is the image id as a safe path under --out (diffseg.filenames): 'sub/a.jpg' stays 'sub/a.jpg', anything
that could leave the folder is escaped ('../x.png' is '%2E%2E/x.png', 'data.parquet#3' is
'data.parquet%233'), and an id whose files would overwrite another id's (a duplicate id, ids that differ only
in case) is written as NAME~2, NAME~3, ..., counted in the last line. The filters (--min-area, --min-score,
--min-stability) choose the segments annotated by coco, sa1b, webdataset's KEY.json and hf's segments; masks
are never changed. Rows with status=error are skipped and counted; a row that cannot be exported (its photo
gone, for webdataset and hf) is skipped and reported in the last line.
Exit status: 0 done, 1 some rows could not be exported, 2 bad arguments or unreadable output.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from diffseg.arguments import OneLineParser  # noqa: E402
from diffseg.methods import spoken  # noqa: E402
from pipeline.export import FORMATS, Format, format_named  # noqa: E402

HELP_WIDTH = 115
"""Columns of the formats' lines in --help, as wide as the text around them."""
OUTPUT_ADVICE = "give the folder of a labeling job's output"
OUT_ADVICE = "give a folder (new or empty)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Imported once argparse has checked the flags, so that --help and bad flags answer at once.
    from pipeline.export.annotations import ExportError, Filters
    from pipeline.export.rows import export, settings
    from pipeline.store.location import Location, StorageError, parse_storage_options

    fmt = format_named(args.format)
    filters = Filters(args.min_area, args.min_score, args.min_stability)
    if not fmt.filters and filters.active():
        parser.error("--min-area, --min-score and --min-stability choose annotations: "
                     f"use them with --format {spoken([f.name for f in FORMATS if f.filters], 'or')}")
    try:
        location = Location(args.output, parse_storage_options(args.storage_options))
        location.check_folder("", OUTPUT_ADVICE)
        Location(args.out).check_folder("--out", OUT_ADVICE)
        chosen = settings(location, Path(args.out), filters, args.shard_size, per_segment=fmt.per_segment)
        tally, written = export(location, fmt.load()(chosen), args.num_workers, not args.no_progress)
    except (ExportError, StorageError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(tally.summary(written), file=sys.stderr)
    return 1 if tally.skipped else 0


def _parser() -> OneLineParser:
    # The formats' lines come from their table, so that a new format is listed, offered and checked with no edit here.
    parser = OneLineParser(prog="jobs/export.py", description=__doc__.replace("{formats}", _described(FORMATS)),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="fsspec URL of a labeling job's output")
    parser.add_argument("--out", required=True, help="local folder for the files")
    parser.add_argument("--format", choices=[f.name for f in FORMATS], default="png", help="default png")
    parser.add_argument("--min-area", type=_at_least(0), default=0, help="pixels (default 0)")
    parser.add_argument("--min-score", type=_fraction, default=None, help="in [0, 1]")
    parser.add_argument("--min-stability", type=_fraction, default=None, help="in [0, 1]")
    parser.add_argument("--shard-size", type=_at_least(1), default=1000,
                        help=f"images per file of --format {spoken([f.name for f in FORMATS if f.sharded], 'and')} "
                             "(default 1000)")
    parser.add_argument("--num-workers", type=_at_least(1), default=4, help="threads for per-image work (default 4)")
    parser.add_argument("--storage-options", default=None, help="JSON object of fsspec options")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _described(formats: Sequence[Format]) -> str:
    """The formats' lines in --help: each name, then its description wrapped in a column beside the names."""
    column = 2 + max(len(f.name) for f in formats) + 2
    return "\n".join(textwrap.fill(f.description, HELP_WIDTH, initial_indent=f"  {f.name:<{column - 2}}",
                                    subsequent_indent=" " * column, break_on_hyphens=False, break_long_words=False)
                      for f in formats)


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer, `low` or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


if __name__ == "__main__":
    sys.exit(main())
