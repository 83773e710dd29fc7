"""DiffSeg's label maps with and without PAMR (`--pamr`), on planted photos whose edges are known.

Every case is a `--size` square photo (`synthetic.photos.shapes`: `--shapes` ellipses and convex polygons of distinct
flat colours, overlapping, on a background, with Gaussian noise of 0.04 in [-1, 1] units) and DiffSeg self-attention
planted from its regions (`synthetic.attention.blurred_attention`): on the finest grid (size / 8 cells a side, 64 x
64 at 512 px) each region's soft mask is the share of each cell it covers, blurred by a Gaussian of `--blurs` cells;
a query attends to each region's keys as much as its cell belongs to that region; the coarser grids (1/2, 1/4, 1/8)
pool it. Both go through DiffSeg's own post-processing at the paper's settings, on the scored path the labeling job
runs (`segment.segment_images_scored`), with `pamr` off and on.

Per case: the boundary F-score at 2 px (`metrics.boundary_f_score`) and the mIoU (`metrics.evaluate`, per-image
matching) of both label maps against the photo's regions, the segments found, and the seconds of the
post-processing without and with PAMR; then the seconds of PAMR alone (`pamr.refined_winners`, from the same
proposals) at 2x the finest grid (DiffSeg's `segment.PAMR_SCALE`) and at 4x (DiffCut's scale), the figures behind
DiffSeg's choice. Then the targets, each marked met or MISSED: a higher BF with PAMR on average over the cases
(and on how many cases), and PAMR at 2x costing no more than the post-processing without it (summed over the
cases). On a shared machine the times are the minimum over `--repeat` runs.

    python benchmarks/bench_edges.py [--size 512] [--shapes 5 12] [--blurs 0 1] [--seeds 3] [--repeat 3]
                                     [--device cpu|cuda] [--json FILE]

Smoke run (seconds): `--size 256 --shapes 5 --blurs 0 --seeds 1 --repeat 1`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.timing import timed  # noqa: E402
from diffseg import DiffSegConfig  # noqa: E402
from diffseg.aggregate import aggregate  # noqa: E402
from diffseg.metrics import boundary_f_score, evaluate  # noqa: E402
from diffseg.pamr import refined_winners  # noqa: E402
from diffseg.segment import PAMR_SCALE, proposals, segment_images_scored  # noqa: E402
from synthetic.attention import blurred_attention  # noqa: E402
from synthetic.photos import shapes  # noqa: E402

TOLERANCE = 2.0
"""The boundary F-score's tolerance, pixels."""
SCALES = (PAMR_SCALE, 4)
"""The detail grids PAMR alone is timed at, in cells per finest attention cell: DiffSeg's and DiffCut's."""


def run_case(size: int, count: int, blur: float, seed: int, repeat: int, device: torch.device) -> dict:
    pixels, regions = shapes(size, seed, count)
    grid = (size // 8, size // 8)
    maps = [m.to(device) for m in blurred_attention(regions, grid, blur)]
    pixels = pixels.to(device)
    classes = int(regions.max()) + 1
    row: dict = {"size": size, "shapes": count, "blur": blur, "seed": seed, "regions": classes}
    for name, pamr in (("plain", False), ("pamr", True)):
        config = DiffSegConfig(pamr=pamr)
        (result,), seconds = timed(lambda: segment_images_scored([maps], config, [(size, size)], [pixels]), repeat,
                                   device)
        labels = result.labels.cpu()
        row[name] = {"bf": boundary_f_score(labels, regions, TOLERANCE),
                     "miou": evaluate([labels], [regions], num_classes=classes)["miou"],
                     "segments": int(labels.max()) + 1, "seconds": seconds}
    (merged,) = proposals([aggregate(maps)], DiffSegConfig(), grid, with_variants=False)[0]
    row["pamr_alone"] = {f"{scale}x": timed(lambda: refined_winners(merged, grid, scale, pixels, (size, size)),
                                            repeat, device)[1] for scale in SCALES}
    return row


def report(row: dict) -> None:
    """One case's line: BF, mIoU, segments and seconds without -> with PAMR, then PAMR alone at each scale."""
    plain, pamr = row["plain"], row["pamr"]
    print(f"{row['size']}x{row['size']} {row['shapes']} shapes blur {row['blur']:g} seed {row['seed']} "
          f"({row['regions']} regions) | BF@{TOLERANCE:g}px {plain['bf']:.3f} -> {pamr['bf']:.3f} | "
          f"mIoU {plain['miou']:.3f} -> {pamr['miou']:.3f} | seg {plain['segments']} -> {pamr['segments']} | "
          f"post {plain['seconds']:.2f} -> {pamr['seconds']:.2f} s | PAMR alone "
          + ", ".join(f"{scale} {seconds:.2f} s" for scale, seconds in row["pamr_alone"].items()), flush=True)


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets over every case, each with whether it was met."""
    mean = {name: sum(row[name]["bf"] for row in rows) / len(rows) for name in ("plain", "pamr")}
    better = sum(row["pamr"]["bf"] > row["plain"]["bf"] for row in rows)
    found = [{"target": f"BF@{TOLERANCE:g}px higher with PAMR on average", "met": mean["pamr"] > mean["plain"],
              "detail": f"{mean['plain']:.3f} -> {mean['pamr']:.3f}, higher on {better}/{len(rows)} cases"}]
    post = sum(row["plain"]["seconds"] for row in rows)
    alone = {scale: sum(row["pamr_alone"][scale] for row in rows) for scale in rows[0]["pamr_alone"]}
    chosen = f"{PAMR_SCALE}x"
    found.append({"target": f"PAMR at {chosen} costs no more than the post-processing without it",
                  "met": alone[chosen] <= post,
                  "detail": f"{alone[chosen]:.2f} s against {post:.2f} s over the cases ("
                            + ", ".join(f"{scale} {seconds:.2f} s" for scale, seconds in alone.items()) + ")"})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="photo side in pixels, a multiple of 64")
    parser.add_argument("--shapes", nargs="*", type=int, default=[5, 12], help="shapes per photo")
    parser.add_argument("--blurs", nargs="*", type=float, default=[0.0, 1.0],
                        help="Gaussian blur of the planted masks, finest-grid cells")
    parser.add_argument("--seeds", type=int, default=3, help="photos per shape count and blur")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}; DiffSeg defaults, PAMR at {PAMR_SCALE}x the finest "
          f"grid, BF tolerance {TOLERANCE:g} px", flush=True)
    rows = []
    for count in args.shapes:
        for blur in args.blurs:
            for seed in range(args.seeds):
                rows.append(run_case(args.size, count, blur, seed, args.repeat, device))
                report(rows[-1])
    found = targets(rows)
    for target in found:
        print(f"{'met   ' if target['met'] else 'MISSED'} {target['target']}: {target['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                               "cases": rows, "targets": found}, indent=2))


if __name__ == "__main__":
    main()
