"""DiffCut's recursive normalized cut against the K-way NCut descent (`diffseg.kway`), on planted features.

Every case plants segments on a token grid of `CHANNELS` channels (DiffCut's feature width): each segment a random
unit direction plus Gaussian noise of norm `noise`. Three families, each with segments of very unequal sizes:

- rectangles: 3 x 4 rectangles cut at uneven fractions of the grid (12 segments);
- voronoi: the cells of 10 sites, half of them clustered in a corner (small cells beside large ones);
- nested: 4 rectangles, each holding a smaller square whose direction leans towards its rectangle's (cosine 0.5),
  on a background: a nested structure a cut must first leave whole, then split.

Both methods see the same affinity (`ncut.affinity_matrix`, `alpha`) and threshold `tau`. Per case and method:
the K-way NCut value of its labels on that affinity (`kway.ncut_value`, lower is better), recovery of the planted
segments (matched accuracy and mIoU, `diffseg.metrics`), segments found and seconds per image. Then the targets,
each marked met or MISSED: K-way value never above DiffCut's, recovery (mean mIoU per family) never below
DiffCut's, and at 64 x 64 at least 3x faster. On a shared machine the times are the minimum over `--repeat` runs.

Per grid, one more case without planted segments (pure noise, which the unbounded recursion peels apart a few
tokens at a time): each method's segments, seconds, and whether its cut stopped at its work bound
(`ncut.MAX_WORK`, `kway.MAX_STEPS`): what one such image costs a labeling job.

    python benchmarks/bench_cuts.py [--grids 32 64] [--noises 0.3 0.6] [--seeds 2] [--repeat 1]
                                    [--device cpu|cuda] [--json FILE]

Smoke run (seconds): `--grids 12 --noises 0.3 --seeds 1`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.timing import timed  # noqa: E402
from diffseg import kway, ncut  # noqa: E402
from diffseg.metrics import evaluate  # noqa: E402

CHANNELS = 1280
TAU = 0.5
ALPHA = 10.0
FAMILIES = ("rectangles", "voronoi", "nested")
SPEEDUP = 3.0
"""The speed target at 64 x 64: the K-way method at least this many times faster than the recursion."""


def rectangles(size: int, generator: torch.Generator) -> torch.Tensor:
    rows = torch.bucketize(torch.arange(size) / size, torch.tensor([0.3, 0.65]), right=True)
    columns = torch.bucketize(torch.arange(size) / size, torch.tensor([0.2, 0.45, 0.75]), right=True)
    return rows[:, None] * 4 + columns[None, :]


def voronoi(size: int, generator: torch.Generator) -> torch.Tensor:
    sites = torch.rand(10, 2, generator=generator)
    sites[:5] = 0.2 + 0.15 * sites[:5]
    grid = torch.stack(torch.meshgrid(torch.arange(size) / size, torch.arange(size) / size, indexing="ij"), dim=-1)
    return torch.cdist(grid.reshape(-1, 2), sites).argmin(dim=1).reshape(size, size)


def nested(size: int, generator: torch.Generator) -> torch.Tensor:
    regions = torch.zeros(size, size, dtype=torch.int64)
    for index, (top, left) in enumerate([(0.05, 0.05), (0.05, 0.55), (0.55, 0.05), (0.55, 0.55)]):
        outer = slice(round(top * size), round((top + 0.4) * size))
        inner_top, inner_left = round((top + 0.1) * size), round((left + 0.1) * size)
        regions[outer, round(left * size):round((left + 0.4) * size)] = 1 + 2 * index
        side = max(1, round(0.15 * size))
        regions[inner_top:inner_top + side, inner_left:inner_left + side] = 2 + 2 * index
    return regions


LAYOUTS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
    "rectangles": rectangles, "voronoi": voronoi, "nested": nested}


def planted(family: str, size: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized fp32 features `(size, size, CHANNELS)` and their int64 segments `(size, size)` 0..K-1."""
    generator = torch.Generator().manual_seed(seed)
    regions = torch.unique(LAYOUTS[family](size, generator), return_inverse=True)[1]
    directions = F.normalize(torch.randn(int(regions.max()) + 1, CHANNELS, generator=generator), dim=1)
    if family == "nested":
        # Even ids are the squares: each leans towards the rectangle before it (odd id), cosine about 0.5.
        for inner in range(2, len(directions), 2):
            directions[inner] = F.normalize(directions[inner - 1] + 1.7 * directions[inner], dim=0)
    features = directions[regions] + noise * torch.randn(size, size, CHANNELS, generator=generator) / CHANNELS**0.5
    return F.normalize(features, dim=-1), regions


def run_case(family: str, size: int, noise: float, seed: int, repeat: int, device: torch.device) -> dict:
    features, truth = planted(family, size, noise, seed)
    features = features.to(device)
    tokens = features.reshape(size * size, CHANNELS)
    affinity = ncut.affinity_matrix(tokens, ALPHA)
    methods = {"diffcut": lambda: ncut.segment_tokens(features, TAU, ALPHA),
               "kway": lambda: kway.segment_tokens(features[None], TAU, ALPHA)[0]}
    row: dict = {"family": family, "grid": size, "noise": noise, "seed": seed, "planted": int(truth.max()) + 1}
    for name, step in methods.items():
        labels, seconds = timed(step, repeat, device)
        scores = evaluate([labels.cpu()], [truth], num_classes=row["planted"])
        row[name] = {"ncut": kway.ncut_value(affinity, labels.reshape(-1)).item(), "accuracy": scores["accuracy"],
                     "miou": scores["miou"], "segments": int(labels.max()) + 1, "seconds": seconds}
    return row


def structureless_case(size: int, repeat: int, device: torch.device) -> dict:
    """Both methods on `(size, size, CHANNELS)` pure noise: segments, seconds and whether the cut stopped at its
    bound (`ncut.Cut.complete` false)."""
    features = F.normalize(torch.randn(size, size, CHANNELS, generator=torch.Generator().manual_seed(0)), dim=-1)
    features = features.to(device)
    methods = {"diffcut": lambda: ncut.segment_tokens_multi(features, [TAU], ALPHA)[0],
               "kway": lambda: kway.segment_tokens_multi([features], [TAU], ALPHA)[0][0]}
    row: dict = {"grid": size}
    for name, step in methods.items():
        cut, seconds = timed(step, repeat, device)
        row[name] = {"segments": int(cut.labels.max()) + 1, "seconds": seconds, "stopped": not cut.complete}
    return row


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets over every case, each with whether it was met."""
    worse = [row for row in rows if row["kway"]["ncut"] > row["diffcut"]["ncut"] + 1e-6]
    found = [{"target": "K-way NCut value never above DiffCut's", "met": not worse,
              "detail": f"{len(rows) - len(worse)}/{len(rows)} cases"}]
    for family in sorted({row["family"] for row in rows}):
        cases = [row for row in rows if row["family"] == family]
        mean = {name: sum(row[name]["miou"] for row in cases) / len(cases) for name in ("diffcut", "kway")}
        found.append({"target": f"{family}: recovery (mean mIoU) at least DiffCut's",
                      "met": mean["kway"] >= mean["diffcut"] - 1e-9,
                      "detail": f"kway {mean['kway']:.3f} vs diffcut {mean['diffcut']:.3f}"})
    large = [row for row in rows if row["grid"] >= 64]
    if large:
        speedup = sum(row["diffcut"]["seconds"] for row in large) / sum(row["kway"]["seconds"] for row in large)
        found.append({"target": f"at 64 x 64, at least {SPEEDUP:g}x faster than the recursion",
                      "met": speedup >= SPEEDUP, "detail": f"{speedup:.1f}x"})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="*", type=int, default=[32, 64], help="token grid sides")
    parser.add_argument("--noises", nargs="*", type=float, default=[0.3, 0.6], help="noise norms")
    parser.add_argument("--seeds", type=int, default=2, help="cases per family, grid and noise")
    parser.add_argument("--families", nargs="*", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}; tau {TAU}, alpha {ALPHA}", flush=True)
    rows, structureless = [], []
    for size in args.grids:
        for family in args.families:
            for noise in args.noises:
                for seed in range(args.seeds):
                    row = run_case(family, size, noise, seed, args.repeat, device)
                    rows.append(row)
                    print(f"{size}x{size} {family:<10} noise {noise:g} seed {seed} ({row['planted']} planted) | "
                          + " | ".join(f"{name}: ncut {row[name]['ncut']:.3f}, acc {row[name]['accuracy']:.3f}, "
                                       f"mIoU {row[name]['miou']:.3f}, {row[name]['segments']} seg, "
                                       f"{row[name]['seconds']:.2f} s" for name in ("diffcut", "kway")), flush=True)
        noise = structureless_case(size, args.repeat, device)
        structureless.append(noise)
        print(f"{size}x{size} noise, nothing planted | " + " | ".join(
            f"{name}: {noise[name]['segments']} seg, {noise[name]['seconds']:.2f} s, "
            + ("stopped at its work bound" if noise[name]["stopped"] else "finished") for name in ("diffcut", "kway")),
              flush=True)
    found = targets(rows)
    for target in found:
        print(f"{'met   ' if target['met'] else 'MISSED'} {target['target']}: {target['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                               "cases": rows, "structureless": structureless, "targets": found},
                                              indent=2))


if __name__ == "__main__":
    main()
