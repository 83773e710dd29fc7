"""`python -m diffseg segment`: label maps and overlays for image files and folders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules before the arguments are checked: --help and flag errors answer at once, without torch.
from .arguments import OneLineParser, add_algorithm_arguments, config_from_args
from .defaults import DEFAULT_MODEL, IMAGE_SUFFIXES, MAX_PIXELS, MODEL_HELP, PRECISIONS
from .filenames import FileNames
from .visualize import FILE_SUFFIXES

if TYPE_CHECKING:
    import torch

    from .preprocess import ImageError, PreparedImage
    from .segmenter import DiffSeg


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 all done, 1 some images skipped, 2 usage or model error)."""
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {args.out} is a file; give a folder (new or empty)")
        jobs = list(_inputs(args.inputs))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 2
    from .model import DTYPES, ModelLoadError
    from .segmenter import DiffSeg

    try:
        segmenter = DiffSeg.from_pretrained(args.model, config=config, device=args.device,
                                            dtype=DTYPES[args.dtype] if args.dtype else None,
                                            max_pixels=args.max_pixels)
    except (ValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return _run(segmenter, jobs, out, args.batch_size)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m diffseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segment", help="segment image files or folders (recursive)")
    seg.add_argument("inputs", nargs="+", help="image files or folders")
    seg.add_argument("--out", required=True,
                     help="folder for NAME.mask.png and NAME.overlay.png (NAME: the file's path under its input "
                          "folder, or its name when given alone, with its suffix, as jobs/export.py names image ids: "
                          "a.jpg gives a.jpg.mask.png; characters other than letters, digits, ' ._-' escaped as "
                          "%%XX)")
    seg.add_argument("--model", default=DEFAULT_MODEL,
                     help=MODEL_HELP)
    add_algorithm_arguments(seg)
    seg.add_argument("--batch-size", type=int, default=1)
    seg.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    seg.add_argument("--dtype", choices=sorted(PRECISIONS), default=None,
                     help="model precision (default: float16 on cuda, float32 on cpu)")
    seg.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images")
    return parser


def _inputs(paths: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(file, output name) for every image file given or found under a folder, sorted. The name keeps the suffix,
    so that a.jpg and a.png do not share files, and matches what jobs/export.py writes for the same image id."""
    for text in paths:
        path = Path(text)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                yield file, file.relative_to(path).as_posix()
        elif path.exists():
            yield path, path.name
        else:
            raise ValueError(f"no such file or folder: {text}")


def _run(segmenter: DiffSeg, jobs: list[tuple[Path, str]], out: Path, batch_size: int) -> int:
    """Segment and save every job, reporting bad images as skipped, in input order; images are batched by
    processing size (`stream`)."""
    from tqdm import tqdm

    from .streaming import stream

    skipped = 0
    names = FileNames(out, FILE_SUFFIXES)
    targets = [names.claim(name) for _, name in jobs]
    prepared = ((target, _prepared(segmenter, file)) for (file, _), target in zip(jobs, targets))
    with tqdm(total=len(jobs), unit="img", file=sys.stderr) as progress:
        for outcome in stream(prepared, partial(segmenter.segment_batch, batch_size=batch_size), batch_size):
            if outcome.error is not None:
                skipped += 1
                progress.write(f"skipped {outcome.error}", file=sys.stderr)
            else:
                _save(outcome.key, outcome.image, outcome.output)
            progress.update()
    renamed = f"; {names.renamed} image(s) named NAME~N so as not to overwrite another's" if names.renamed else ""
    print(f"segmented {len(jobs) - skipped} image(s), skipped {skipped}; masks in {out}{renamed}", file=sys.stderr)
    return 1 if skipped else 0


def _prepared(segmenter: DiffSeg, file: Path) -> PreparedImage | ImageError:
    """The file prepared for `segmenter`, or why it cannot be."""
    from .preprocess import ImageError

    try:
        return segmenter.prepare(file)
    except ImageError as error:
        return error


def _save(target: Path, image: PreparedImage, labels: torch.Tensor) -> None:
    """Write the image's files at `target` (a stem from `FileNames`)."""
    from .visualize import label_image, overlay, to_image

    target.parent.mkdir(parents=True, exist_ok=True)
    mask, overlay_file = (target.with_name(target.name + suffix) for suffix in FILE_SUFFIXES)
    label_image(labels).save(mask)
    overlay(to_image(image.pixels), labels).save(overlay_file)
