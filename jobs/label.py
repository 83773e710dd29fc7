"""Label a dataset of images with DiffSeg masks on a Ray cluster, exactly once, resumable.

    ray job submit --working-dir . -- python jobs/label.py --input s3://bucket/images --output s3://bucket/masks
    python jobs/label.py --input samples --output out/masks --model tiny      # local Ray

The last line printed is a JSON summary. Exit status: 0 every shard written (images that could not be
used are rows with status=error), 1 some shard failed for good, 2 bad arguments or the job could not start.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# Only light modules before the arguments are checked: --help and flag errors answer at once, without torch.
from diffseg.arguments import OneLineParser, add_algorithm_arguments, config_from_args  # noqa: E402
from diffseg.defaults import DEFAULT_MODEL, MAX_PIXELS, MODEL_HELP, PRECISIONS  # noqa: E402
from pipeline.execution.capacity import GIB  # noqa: E402
from pipeline.execution.command import add_ray_arguments, check_at_least, job_or_exit, ray_minimums, run_ray_job  # noqa: E402
from pipeline.labeling.job import LabelJob  # noqa: E402
from pipeline.store.inputs import FORMATS, ParquetColumns  # noqa: E402
from pipeline.store.location import Location, StorageError, parse_storage_options  # noqa: E402

if TYPE_CHECKING:
    from pipeline.labeling.driver import Summary

INPUT_ADVICE = ("give the folder or prefix that holds the images, tar or Parquet files (to label one file, put it in "
                "a folder of its own)")
OUTPUT_ADVICE = "give a folder (a new one, or an earlier run's output to go on with it)"
MODEL_FILES = ("model_index.json", "unet")
"""What makes a folder a diffusers model, either one (the loader reads unet/ and the other parts beside it)."""


def parser() -> argparse.ArgumentParser:
    """The job's command-line interface."""
    p = OneLineParser(prog="jobs/label.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True,
                   help="fsspec URL: folder of images (recursive), of WebDataset .tar shards, or of Parquet files")
    p.add_argument("--output", required=True, help="fsspec URL of the output folder of mask Parquet files")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    p.add_argument("--input-format", choices=FORMATS, default="auto",
                   help="default: detected from the files found")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard for image folders (default 1000)")
    p.add_argument("--image-column", default=None,
                   help="Parquet inputs: column of image bytes (default: image, jpg, ...)")
    p.add_argument("--id-column", default=None,
                   help="Parquet inputs: column of image ids (default: key, else FILE#ROW)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="default: 1 when the cluster has GPUs, else 0; at most 1, fractions share a GPU")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="default: with GPUs, the CPUs that come with them on a node; else those of the smallest node")
    p.add_argument("--memory-per-actor", type=float, default=None, metavar="GIB",
                   help="host memory each actor reserves, in GiB (default: 6 for CPU actors, 4 with GPUs, 2 for "
                        "the tiny models; 0 reserves none)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per UNet forward (default: 8 on a GPU, fewer if its memory is small; 1 on CPU)")
    p.add_argument("--dtype", choices=PRECISIONS, default=None,
                   help="model precision (default: float16 on GPU, float32 on CPU)")
    add_algorithm_arguments(p)
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="larger images become error rows")
    p.add_argument("--descriptors", action="store_true",
                   help="also write each segment's descriptor (1280 float16 values), for jobs/cluster.py")
    p.add_argument("--startup-timeout", type=float, default=0,
                   help="seconds to wait for an autoscaling cluster to add the nodes the actors need (default 0: "
                        "the resources must be there now)")
    p.add_argument("--relabel-changed", action="store_true",
                   help="relabel input files that changed since they were labeled (each whole shard holding one, "
                        "replacing its mask file); default: only report them")
    p.add_argument("--max-files", type=int, default=None,
                   help="label at most N new input files, the first in key order, and stop listing there: a trial "
                        "run on the start of a huge input (run again without it for the rest)")
    add_ray_arguments(p, "model replicas (default: as many as the cluster can host now)")
    return p


def job_from_args(args: argparse.Namespace) -> LabelJob:
    """The `LabelJob` the parsed arguments describe; raises `ValueError` naming a bad value."""
    check_at_least([("--shard-size", args.shard_size, 1), ("--batch-size", args.batch_size, 1),
                    ("--gpus-per-actor", args.gpus_per_actor, 0), ("--max-pixels", args.max_pixels, 1),
                    ("--cpus-per-actor", args.cpus_per_actor, 0.001), ("--memory-per-actor", args.memory_per_actor, 0),
                    ("--startup-timeout", args.startup_timeout, 0), ("--max-files", args.max_files, 1),
                    *ray_minimums(args)])
    if args.gpus_per_actor is not None and args.gpus_per_actor > 1:
        raise ValueError(f"--gpus-per-actor must be at most 1, got {args.gpus_per_actor:g}: a model replica runs on "
                         "one GPU; more actors (--num-actors) use more GPUs")
    config = config_from_args(args)
    return LabelJob(input=args.input, output=args.output, model=args.model, revision=args.revision, config=config,
                    input_format=args.input_format, shard_size=args.shard_size,
                    columns=ParquetColumns(image=args.image_column, id=args.id_column),
                    num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                    memory_per_actor=None if args.memory_per_actor is None else args.memory_per_actor * GIB,
                    batch_size=args.batch_size, dtype=args.dtype, max_pixels=args.max_pixels,
                    descriptors=args.descriptors,
                    max_retries=args.max_retries, retry_delay=args.retry_delay, startup_timeout=args.startup_timeout,
                    relabel_changed=args.relabel_changed, max_files=args.max_files,
                    storage_options=parse_storage_options(args.storage_options))


def checked_job(args: argparse.Namespace) -> LabelJob:
    """`job_from_args`, then what can be refused before Ray starts: a model path that is no model folder, an input
    or output that is a file, a store without credentials or that does not answer (one request each)."""
    job = job_from_args(args)
    check_model(job.model)
    Location(job.input, job.storage_options).check_folder("--input", INPUT_ADVICE)
    Location(job.output, job.storage_options).check_folder("--output", OUTPUT_ADVICE)
    return job


def check_model(model: str) -> None:
    """Raise `ValueError` when `model` is a filesystem path (as the loader tells one: it starts with '/', '.' or
    '~', has more than one '/', or is a folder that exists) but no folder in the diffusers layout. A bare name is a
    built-in or a Hub id, left to the loader: only it can tell a built-in's name from a folder of that name."""
    path = Path(model).expanduser()
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1 or ("/" in model and path.is_dir())
    if not looks_like_path:
        return
    if not path.is_dir():
        raise ValueError(f"--model {model}: no such folder; give a folder in the diffusers layout, a Hub id, or "
                         "tiny for a smoke run")
    if not any((path / name).exists() for name in MODEL_FILES):
        raise ValueError(f"--model {model} is not a diffusers model folder (no model_index.json nor unet/ in it); "
                         "give the folder that holds them")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    job = job_or_exit(checked_job, args)
    from diffseg import ModelLoadError
    from pipeline.execution.capacity import JobError
    from pipeline.labeling.driver import execute, plan
    from pipeline.store.dataset import OutputConflict

    return run_ray_job(lambda: plan(job), lambda planned: bool(planned.todo),
                       lambda planned: execute(planned, progress=not args.no_progress), args.address,
                       (ValueError, StorageError, OutputConflict, ModelLoadError, JobError, ConnectionError),
                       lambda summary: _account(job, summary))


def _account(job: LabelJob, summary: Summary) -> str:
    """The run in one line, for stderr."""
    return (f"{summary.files_new} new input file(s) found, {summary.images_ok} image(s) labeled, "
            f"{summary.images_failed} failed, {summary.shards_written} shard(s) written, {summary.shards_skipped} "
            f"already done, {summary.shards_failed} failed; masks in {summary.output}" + _warned_line(summary)
            + _changes_line(summary)
            + _ignored_line(summary)
            + (f"; stopped listing at --max-files {job.max_files}: run again without it to label the rest"
               if summary.max_files_reached else ""))


def _warned_line(summary: Summary) -> str:
    """The part of the last stderr line counting the masks coarser than asked, if any were."""
    if not summary.images_warned:
        return ""
    return (f"; {summary.images_warned} mask(s) coarser than the settings ask for (their rows' `warning` says why: "
            "a cut that stopped at its work bound)")


def _ignored_line(summary: Summary) -> str:
    """The part of the last stderr line naming the first files left out of the input, if any were, and the file
    that lists them all."""
    if not summary.files_ignored:
        return ""
    more = ", ..." if summary.files_ignored > len(summary.ignored_files) else ""
    listed = f" (all listed in {summary.ignored_files_file})" if summary.ignored_files_file else ""
    return (f"; {summary.files_ignored} file(s) under the input ignored (hidden, or not of the input's kind): "
            f"{', '.join(summary.ignored_files)}{more}{listed}")


def _changes_line(summary: Summary) -> str:
    """The part of the last stderr line about input files that changed or vanished since they were labeled."""
    if not summary.changes:
        return ""
    action = ("the changed ones relabeled; " if summary.files_relabeled
              else "--relabel-changed relabels the changed ones; " if summary.files_changed else "")
    return (f"; {summary.files_changed} file(s) changed and {summary.files_vanished} vanished since they were "
            f"labeled ({action}listed in {summary.changes})")


if __name__ == "__main__":
    sys.exit(main())
