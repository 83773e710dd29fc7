r"""Score DiffSeg, a K-Means baseline, DiffCut, or a labeling job's masks on a labeled dataset, as the papers do.

    python jobs/evaluate.py --dataset coco-stuff-27 --root data/cocostuff --image-list Coco164kFull_Stuff_Coarse_7.txt
    python jobs/evaluate.py --dataset cityscapes --root data/cityscapes --sweep 0.7,0.8,0.9,1.0,1.1 --limit 100
    python jobs/evaluate.py --dataset cityscapes --root data/cityscapes --predictions s3://bucket/masks/
    python jobs/evaluate.py --dataset coco-stuff-27 --root data/cocostuff --image-list Coco164kFull_Stuff_Coarse_7.txt \
        --method diffcut --model segmind/SSD-1B --label-size 128 --pamr

Defaults follow the DiffSeg paper: the center square of each image at 512x512 (labels cropped the same way and
resized by nearest neighbour), tau 1.1 for COCO-Stuff-27 and 0.9 for Cityscapes, per-image Hungarian
matching. DiffCut's paper: 1024x1024, tau 0.5, scored at 128x128 (`--label-size 128`).

Prints a table (ACC, mIoU, images, seconds), writes one row per image to --scores (a new file: one that exists is
refused before anything is scored), and prints a JSON summary as its last line. Exit status: 0 every image scored,
1 some images could not be scored (the scores file says why), 2 bad arguments, dataset, output or model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# Only light modules before the arguments are checked: --help and flag errors answer at once, without torch.
from diffseg.arguments import OneLineParser, add_algorithm_arguments, config_from_args, parse_thresholds  # noqa: E402
from diffseg.config import DiffSegConfig  # noqa: E402
from diffseg.defaults import DEFAULT_MODEL, MODEL_HELP, PRECISIONS  # noqa: E402
from diffseg.methods import variant_method  # noqa: E402
from pipeline.evaluation.choices import PROTOCOLS, SCORED_METHODS  # noqa: E402
from pipeline.evaluation.datasets import DATASETS, SPLITS, LabeledDataset, open_dataset  # noqa: E402
from pipeline.store.location import Location, StorageError, parse_storage_options  # noqa: E402

if TYPE_CHECKING:
    from pipeline.evaluation.scoring import Report

ROOT_ADVICE = "give the dataset's folder"
PREDICTIONS_ADVICE = "give the folder of a labeling job's output"
REPORT_ADVICE = "give a folder (new or empty)"

def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = OneLineParser(prog="jobs/evaluate.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True,
                   help="fsspec URL of the dataset's folder (layouts: pipeline/evaluation/datasets.py)")
    p.add_argument("--split", default=None, help="split folder (default: " +
                   ", ".join(f"{name} {split}" for name, split in SPLITS.items()) + ")")
    p.add_argument("--image-list", default=None,
                   help="file of image names to score, one per line (e.g. the curated COCO-Stuff-27 list)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N images")
    p.add_argument("--predictions", default=None, metavar="OUTPUT_URL",
                   help="score the masks of a labeling job's output instead of running a model (its manifest "
                        "gives the crop and resolution; model and algorithm flags do not apply)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--revision", default=None, help="Hub revision of --model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default=None,
                   help="model precision (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images per UNet forward (default 1)")
    add_algorithm_arguments(p, SCORED_METHODS, crop="center", kl_threshold=None)
    p.add_argument("--sweep", type=parse_thresholds, default=None, metavar="TAUS",
                   help="score several merge (diffseg) or cut (diffcut) thresholds at once, comma-separated (one "
                        "forward per image)")
    p.add_argument("--label-size", type=int, default=None, metavar="N",
                   help="score at N x N (with --crop center): masks made at that size, ground truth resized by "
                        "nearest neighbour; DiffCut's paper uses 128 (default: at the mask's size)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="per-image",
                   help="per-image Hungarian matching (the paper's, default) or one matching over the dataset")
    p.add_argument("--scores", default=None,
                   help="per-image scores file, .csv or .parquet (default out/evaluate/DATASET-METHOD.csv); a file "
                        "that exists is refused, never overwritten")
    p.add_argument("--report", default=None, metavar="DIR", help="also write DIR/index.html with sample images")
    p.add_argument("--samples", type=int, default=12, help="images shown in the report (default 12)")
    p.add_argument("--storage-options", default=None, help="JSON object of fsspec options for --root and "
                                                           "--predictions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def opened(args: argparse.Namespace, scores: str) -> LabeledDataset:
    """The dataset, opened once everything that can be refused before torch is imported was checked: flag values,
    a scores file that exists (a run never overwrites another's), a report folder that is a file, a dataset or
    predictions location that is a file or whose store cannot be used; raises `ValueError` or `StorageError` with
    a one-line message."""
    for flag, value, least in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                               ("--samples", args.samples, 0), ("--label-size", args.label_size, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.label_size and args.crop != "center" and not args.predictions:
        raise ValueError("--label-size scores square masks: it needs --crop center")
    if args.predictions and (args.sweep or args.method != DiffSegConfig.method):
        raise ValueError("--predictions scores masks that exist; --sweep and --method need a model")
    options = parse_storage_options(args.storage_options)
    Location(args.root, options).check_folder("--root", ROOT_ADVICE)
    if args.predictions:
        Location(args.predictions, options).check_folder("--predictions", PREDICTIONS_ADVICE)
    if args.report:
        Location(args.report).check_folder("--report", REPORT_ADVICE)
    folder, name = scores.rstrip("/").rsplit("/", 1) if "/" in scores else (".", scores)
    scores_folder = Location(folder, options)
    scores_folder.check_folder("the folder of --scores", "give --scores a path in a folder")
    if scores_folder.exists(name):
        raise ValueError(f"--scores {scores} exists; choose another file with --scores, or remove it")
    return open_dataset(args.dataset, args.root, args.split, args.image_list, options)


def run(args: argparse.Namespace, dataset: LabeledDataset) -> Report:
    """Score what the arguments ask for on `dataset`; raises `ValueError`, `StorageError` or `ModelLoadError` with
    a one-line message."""
    from diffseg import DiffSeg
    from diffseg.model import DTYPES
    from pipeline.evaluation.scoring import score_model, score_predictions, variants

    progress = not args.no_progress
    if args.predictions:
        return score_predictions(Location(args.predictions, parse_storage_options(args.storage_options)), dataset,
                                 args.limit, args.samples, args.protocol, progress, args.label_size)
    method = variant_method(args.method)[0].name  # K-Means-S runs the kmeans-c method
    tau = dataset.kl_threshold if args.kl_threshold is None else args.kl_threshold
    config = config_from_args(args, method=method, kl_threshold=tau)
    sweep = (args.sweep,) if isinstance(args.sweep, float) else args.sweep
    scored = variants(args.method, config, sweep)
    segmenter = DiffSeg.from_pretrained(args.model, config=config, device=args.device,
                                        dtype=DTYPES[args.dtype] if args.dtype else None, revision=args.revision)
    return score_model(segmenter, dataset, scored, args.batch_size, args.limit, args.samples, args.protocol,
                       progress, args.label_size)


def table(report: Report) -> str:
    """The scores as a text table, one line per variant."""
    from pipeline.display.pages import percent

    width = max([len("method")] + [len(name) for name in report.results])
    lines = [f"{report.dataset}: {report.images} image(s), {report.failed} not scored, {report.protocol} matching",
             f"{'method':<{width}}  {'ACC %':>6}  {'mIoU %':>6}  {'images':>6}  {'seconds':>8}"]
    for name, result in report.results.items():
        lines.append(f"{name:<{width}}  {percent(result['accuracy']):>6}  {percent(result['miou']):>6}  "
                     f"{result['images']:>6}  {result['seconds']:>8.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    scores = args.scores or f"out/evaluate/{args.dataset}-{'predictions' if args.predictions else args.method}.csv"
    try:
        dataset = opened(args, scores)
    except (ValueError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Imported once the arguments were checked and the dataset opened: they bring torch.
    from diffseg import ModelLoadError
    from pipeline.evaluation.report import write_report
    from pipeline.evaluation.scoring import write_scores

    try:
        report = run(args, dataset)
        write_scores(report, scores, parse_storage_options(args.storage_options))
        page = write_report(report, args.report) if args.report else None
    except (ValueError, StorageError, ModelLoadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(report))
    print(f"per-image scores: {scores}" + (f"; report: {page}" if page else ""), file=sys.stderr)
    print(json.dumps({**report.summary(), "scores": scores, "report": str(page) if page else None}), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
