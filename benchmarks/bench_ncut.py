"""DiffCut post-processing benchmark: the recursive normalized cut per image, and `eigh` by matrix size.

(a) Per token grid (`--grids`, h = w), on planted features of `CHANNELS` channels (the feature width of SD 1.x
and SDXL's DiffCut layer) with `SEGMENTS` rectangular segments, milliseconds per image of: the cut alone
(`ncut.segment_tokens`), DiffCut's post-processing (`diffcut.segment_features`) and the same with segment scores
and stability (`diffcut.segment_features_scored`, what the labeling job runs), label maps at the default output
size (the grid times `PIXELS_PER_TOKEN`).
(b) Per matrix size (`--sizes`), milliseconds of one fp32 `torch.linalg.eigh` of a normalized Laplacian on the
CPU (LAPACK) and, with `--device cuda`, on the GPU (cuSOLVER) and through the CPU from the GPU (copy there, CPU
`eigh`, one eigenvector back: what `ncut` does below `ncut.CUDA_EIGH_MIN_SIZE`). The GPU check reads the
crossover off this table to confirm that threshold.

Each figure is the minimum over `--repeat` runs after a warm-up (the least disturbed run on a shared machine).

    python benchmarks/bench_ncut.py [--grids 32 64] [--sizes 64 128 256 512 1024 2048 4096] [--repeat 2]
                                    [--device cpu|cuda] [--json FILE]

Smoke run (under 30 s on a 2-core CPU): `--grids 8 --sizes 64 --repeat 1`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from diffseg import ncut  # noqa: E402
from diffseg.config import DiffSegConfig  # noqa: E402
from diffseg.diffcut import PIXELS_PER_TOKEN, segment_features, segment_features_scored  # noqa: E402

CHANNELS = 1280
ROW_SPLITS = (0.0, 0.3, 0.65, 1.0)
COLUMN_SPLITS = (0.0, 0.2, 0.45, 0.75, 1.0)
"""Fractions of the grid at which the planted rectangles meet: 3 x 4 = 12 segments of unequal sizes, so that no
two cuts are nearly as good (the order of what the paper's images give)."""
SEGMENTS = (len(ROW_SPLITS) - 1) * (len(COLUMN_SPLITS) - 1)


def planted(size: int, seed: int = 0) -> torch.Tensor:
    """fp32 `(size, size, CHANNELS)`: a random unit direction per rectangle, plus Gaussian noise of norm about 0.5."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.bucketize(torch.arange(size) / size, torch.tensor(ROW_SPLITS[1:-1]), right=True)
    columns = torch.bucketize(torch.arange(size) / size, torch.tensor(COLUMN_SPLITS[1:-1]), right=True)
    regions = rows[:, None] * (len(COLUMN_SPLITS) - 1) + columns[None, :]
    directions = torch.nn.functional.normalize(torch.randn(SEGMENTS, CHANNELS, generator=generator), dim=1)
    return directions[regions] + 0.5 * torch.randn(size, size, CHANNELS, generator=generator) / CHANNELS**0.5


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms(step: Callable[[], object], repeat: int, device: torch.device) -> float:
    """The minimum milliseconds of `step` over `repeat` runs after one warm-up."""
    times = []
    for round_ in range(repeat + 1):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if round_:
            times.append(1000 * (time.perf_counter() - start))
    return min(times)


def bench_grid(size: int, repeat: int, device: torch.device) -> dict:
    """(a) for one `size` x `size` grid."""
    config = DiffSegConfig(method="diffcut")
    features = [planted(size).to(device)]
    output = [(size * PIXELS_PER_TOKEN, size * PIXELS_PER_TOKEN)]
    tokens = torch.nn.functional.normalize(features[0], dim=-1)
    segments = int(ncut.segment_tokens(tokens, config.ncut_threshold, config.alpha).max()) + 1
    return {"grid": size, "segments": segments,
            "cut_ms": best_ms(lambda: ncut.segment_tokens(tokens, config.ncut_threshold, config.alpha), repeat, device),
            "plain_ms": best_ms(lambda: segment_features(features, config, output), repeat, device),
            "scored_ms": best_ms(lambda: segment_features_scored(features, config, output), repeat, device)}


def laplacian(size: int, device: torch.device) -> torch.Tensor:
    """fp32 `(size, size)`: the normalized Laplacian of DiffCut's affinity of random tokens, on `device`."""
    tokens = torch.randn(size, 64, generator=torch.Generator().manual_seed(size))
    affinity = ncut.affinity_matrix(tokens, 10.0)
    scale = 1 / affinity.sum(dim=1).sqrt()
    return (torch.eye(size) - scale[:, None] * affinity * scale[None, :]).to(device)


def bench_eigh(size: int, repeat: int, device: torch.device) -> dict:
    """(b) for one matrix size."""
    cpu = torch.device("cpu")
    matrix = laplacian(size, cpu)
    result = {"size": size, "cpu_ms": best_ms(lambda: torch.linalg.eigh(matrix), repeat, cpu)}
    if device.type == "cuda":
        on_device = matrix.to(device)
        result["cuda_ms"] = best_ms(lambda: torch.linalg.eigh(on_device), repeat, device)
        result["via_cpu_ms"] = best_ms(lambda: torch.linalg.eigh(on_device.cpu())[1][:, 1].to(device), repeat, device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="*", type=int, default=[32, 64], help="token grid sides for (a)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[64, 128, 256, 512, 1024, 2048, 4096],
                        help="matrix sizes for (b)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}", flush=True)
    figures: dict = {"device": str(device), "threads": torch.get_num_threads(), "grids": [], "eigh": []}
    for size in args.grids:
        row = bench_grid(size, args.repeat, device)
        figures["grids"].append(row)
        print(f"{size}x{size} tokens x {CHANNELS}: {row['segments']} segments | cut {row['cut_ms']:.0f} ms | "
              f"segment_features {row['plain_ms']:.0f} ms | segment_features_scored {row['scored_ms']:.0f} ms "
              f"per image", flush=True)
    for size in args.sizes:
        row = bench_eigh(size, args.repeat, device)
        figures["eigh"].append(row)
        gpu = (f" | cuda {row['cuda_ms']:.1f} ms | cuda via cpu {row['via_cpu_ms']:.1f} ms"
               if "cuda_ms" in row else "")
        print(f"eigh {size}: cpu {row['cpu_ms']:.1f} ms{gpu}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
