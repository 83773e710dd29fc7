"""`python -m diffseg segment`: label maps and overlays for image files and folders."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .batching import batches
from .config import CROP_MODES, METHODS, DiffSegConfig
from .model import DEFAULT_MODEL, DTYPES, ModelLoadError
from .preprocess import MAX_PIXELS, PreparedImage
from .segmenter import DiffSeg
from .visualize import label_image, overlay, to_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 all done, 1 some images skipped, 2 usage or model error)."""
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        jobs = list(_inputs(args.inputs))
        segmenter = DiffSeg.from_pretrained(args.model, config=config, device=args.device,
                                            dtype=DTYPES[args.dtype] if args.dtype else None,
                                            max_pixels=args.max_pixels)
    except (ValueError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not jobs:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 2
    return _run(segmenter, jobs, Path(args.out), args.batch_size)


class OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line on stderr and exit status 2 (argparse would print the usage first)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m diffseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    seg = commands.add_parser("segment", help="segment image files or folders (recursive)")
    seg.add_argument("inputs", nargs="+", help="image files or folders")
    seg.add_argument("--out", required=True, help="folder for NAME.mask.png and NAME.overlay.png")
    seg.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"Hub id, local diffusers folder, or 'tiny' (default {DEFAULT_MODEL})")
    add_algorithm_arguments(seg)
    seg.add_argument("--batch-size", type=int, default=1)
    seg.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    seg.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                     help="model precision (default: float16 on cuda, float32 on cpu)")
    seg.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="refuse larger images")
    return parser


def add_algorithm_arguments(parser: argparse.ArgumentParser, methods: Sequence[str] = METHODS,
                            crop: str = DiffSegConfig.crop,
                            kl_threshold: float | None = DiffSegConfig.kl_threshold) -> None:
    """The `DiffSegConfig` flags shared by every command line (`config_from_args` reads them back).

    `crop` and `kl_threshold` are the command's defaults; `kl_threshold=None` leaves the threshold to the
    command (which must say how it chooses it)."""
    parser.add_argument("--method", choices=methods, default=DiffSegConfig.method,
                        help="diffseg (the paper's method, default) or a K-Means baseline on the same attention")
    parser.add_argument("--kl-threshold", type=parse_thresholds, default=kl_threshold,
                        help="merge threshold, or one per pass comma-separated (default "
                             + (f"{kl_threshold:g})" if kl_threshold is not None else "set by the command, see above)"))
    parser.add_argument("--num-points", type=int, default=DiffSegConfig.num_points,
                        help="anchor grid side (default 16)")
    parser.add_argument("--num-clusters", type=int, default=DiffSegConfig.num_clusters,
                        help="K of --method kmeans-c (default 6)")
    parser.add_argument("--timestep", type=int, default=DiffSegConfig.timestep, help="default 300")
    parser.add_argument("--resolution", type=int, default=DiffSegConfig.resolution,
                        help="processing size of the longer side, a multiple of 64 (default 512)")
    parser.add_argument("--crop", choices=CROP_MODES, default=crop,
                        help=f"none: whole image; center: the paper's square crop (default {crop})")
    parser.add_argument("--refine", action="store_true", help="K-Means refinement of the merged segments")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> DiffSegConfig:
    """The `DiffSegConfig` of flags added by `add_algorithm_arguments`; raises `ValueError` on a bad value."""
    settings = dict(method=args.method, kl_threshold=args.kl_threshold, num_points=args.num_points,
                    num_clusters=args.num_clusters, timestep=args.timestep, resolution=args.resolution,
                    crop=args.crop, refine=args.refine)
    return DiffSegConfig(**{**settings, **overrides})


def parse_thresholds(text: str) -> float | tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None
    return values[0] if len(values) == 1 else values


def _inputs(paths: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(file, output name without suffix) for every image file given or found under a folder, sorted."""
    for text in paths:
        path = Path(text)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                yield file, file.relative_to(path).with_suffix("").as_posix()
        elif path.exists():
            yield path, path.stem
        else:
            raise ValueError(f"no such file or folder: {text}")


def _run(segmenter: DiffSeg, jobs: list[tuple[Path, str]], out: Path, batch_size: int) -> int:
    """Segment and save every job; images wait for a full batch of their processing size, so only the last
    batch of each size is short."""
    skipped = 0

    def prepared() -> Iterator[tuple[PreparedImage, str]]:
        nonlocal skipped
        for (file, _), name in zip(jobs, _unique_names(jobs)):
            try:
                yield segmenter.prepare(file), name
            except ValueError as error:
                skipped += 1
                progress.write(f"skipped {error}", file=sys.stderr)
                progress.update()

    with tqdm(total=len(jobs), unit="img", file=sys.stderr) as progress:
        for batch in batches(prepared(), lambda item: item[0].pixels.shape, batch_size):
            labels = segmenter.segment_prepared([image for image, _ in batch], batch_size)
            for (image, name), mask in zip(batch, labels):
                _save(out, name, image, mask)
            progress.update(len(batch))
    print(f"segmented {len(jobs) - skipped} image(s), skipped {skipped}; masks in {out}", file=sys.stderr)
    return 1 if skipped else 0


def _unique_names(jobs: list[tuple[Path, str]]) -> list[str]:
    """Output names; two inputs that share a name (a.jpg, a.png) keep their suffix in it."""
    counts = Counter(name for _, name in jobs)
    return [name if counts[name] == 1 else f"{name}{file.suffix}" for file, name in jobs]


def _save(out: Path, name: str, image: PreparedImage, labels: torch.Tensor) -> None:
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    label_image(labels).save(target.with_name(target.name + ".mask.png"))
    overlay(to_image(image.pixels), labels).save(target.with_name(target.name + ".overlay.png"))
