"""Command-line pieces shared by every command (`python -m diffseg`, `jobs/`): one-line flag errors and the
algorithm flags. Importing this module does not import torch, so `--help` and flag errors answer at once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .config import CROP_MODES, DiffSegConfig
from .methods import METHODS, spoken


class OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line on stderr and exit status 2 (argparse would print the usage first)."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def add_algorithm_arguments(parser: argparse.ArgumentParser, methods: Sequence[str] = tuple(METHODS),
                            crop: str = DiffSegConfig.crop,
                            kl_threshold: float | None = DiffSegConfig.kl_threshold) -> None:
    """The `DiffSegConfig` flags shared by every command line (`config_from_args` reads them back).

    `crop` and `kl_threshold` are the command's defaults; `kl_threshold=None` leaves the threshold to the
    command (which must say how it chooses it)."""
    parser.add_argument("--method", choices=methods, default=DiffSegConfig.method,
                        help=_method_help())
    parser.add_argument("--kl-threshold", type=parse_thresholds, default=kl_threshold,
                        help="merge threshold, or one per pass comma-separated (default "
                             + (f"{kl_threshold:g})" if kl_threshold is not None else "set by the command, see above)"))
    parser.add_argument("--num-points", type=int, default=DiffSegConfig.num_points,
                        help="anchor grid side (default 16)")
    parser.add_argument("--num-clusters", type=int, default=DiffSegConfig.num_clusters,
                        help="K of --method kmeans-c (default 6)")
    parser.add_argument("--timestep", type=int, default=None,
                        help=f"diffusion timestep (default {_by_method('timestep')})")
    parser.add_argument("--resolution", type=int, default=None,
                        help="processing size of the longer side, a multiple of 64 "
                             f"(default {_by_method('resolution')})")
    parser.add_argument("--crop", choices=CROP_MODES, default=crop,
                        help=f"none: whole image; center: the paper's square crop (default {crop})")
    parser.add_argument("--refine", action="store_true", help="K-Means refinement of the merged segments")
    parser.add_argument("--ncut-threshold", type=float, default=DiffSegConfig.ncut_threshold,
                        help="diffcut: keep cutting while the normalized cut is below this; larger gives more "
                             "segments (default 0.5)")
    parser.add_argument("--alpha", type=float, default=DiffSegConfig.alpha,
                        help="diffcut: exponent of the token affinity (default 10)")
    parser.add_argument("--pamr", action="store_true",
                        help="diffseg, diffcut, kway: move the masks' edges onto the image's (PAMR on its colours; "
                             "diffcut: as the paper's best results)")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> DiffSegConfig:
    """The `DiffSegConfig` of flags added by `add_algorithm_arguments`; raises `ValueError` on a bad value."""
    settings = dict(method=args.method, kl_threshold=args.kl_threshold, num_points=args.num_points,
                    num_clusters=args.num_clusters, timestep=args.timestep, resolution=args.resolution,
                    crop=args.crop, refine=args.refine, ncut_threshold=args.ncut_threshold, alpha=args.alpha,
                    pamr=args.pamr)
    return DiffSegConfig(**{**settings, **overrides})


def _method_help() -> str:
    """`diffseg (default; DiffSeg, CVPR 2024), kmeans-c (...) or diffcut (...)`."""
    default = DiffSegConfig.method
    return spoken([f"{name} ({'default; ' if name == default else ''}{method.summary})"
                   for name, method in METHODS.items()], "or")


def _by_method(name: str) -> str:
    """Each method's default `name` setting, `diffseg 300, diffcut 50`; one that an earlier method has already is
    not repeated (K-Means-C runs DiffSeg's forward)."""
    defaults: dict[object, str] = {}
    for method in METHODS.values():
        defaults.setdefault(getattr(method, name), method.name)
    return ", ".join(f"{method} {value}" for value, method in defaults.items())


def parse_thresholds(text: str) -> float | tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None
    return values[0] if len(values) == 1 else values
