"""Dataset-wide pseudo-classes: cluster the segment descriptors of a labeling output (made with --descriptors)
into K classes, and write semantic masks whose pixel values mean the same class in every image.

    python jobs/cluster.py --input s3://bucket/masks --output s3://bucket/classes-27 --classes 27
    python jobs/evaluate.py --dataset coco-stuff-27 --root data/cocostuff --predictions s3://bucket/classes-27 \\
        --protocol dataset

Spherical k-means (faiss) trains on at most --sample descriptors drawn uniformly over the whole input; then a pool
of Ray actors assigns every segment of every shard to its nearest centroid by cosine, one output file per input
shard, exactly once: re-running the same command after a failure finishes the rest with the same centroids.
The last line printed is a JSON summary. Exit status: 0 every shard written, 1 some shard failed for good,
2 bad arguments, an input without descriptors, an output made with other settings, or a job that could not start.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# Only light modules before the arguments are checked: --help and flag errors answer at once, without Ray or faiss.
from diffseg.arguments import OneLineParser  # noqa: E402
from pipeline.clustering.job import ACTOR_MEMORY, DEFAULT_SAMPLE, MAX_CLASSES, ClusterJob  # noqa: E402
from pipeline.execution.capacity import GIB  # noqa: E402
from pipeline.execution.command import add_ray_arguments, check_at_least, job_or_exit, ray_minimums, run_ray_job  # noqa: E402
from pipeline.store.location import Location, StorageError, parse_storage_options  # noqa: E402

MAX_SEED = 2**31 - 1
"""faiss takes a C int seed."""
INPUT_ADVICE = "give the folder of a labeling output made with --descriptors"
OUTPUT_ADVICE = "give a folder (a new one, or an earlier run's output to go on with it)"


def parser() -> argparse.ArgumentParser:
    """The job's command-line interface."""
    p = OneLineParser(prog="jobs/cluster.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="fsspec URL of a labeling output made with --descriptors")
    p.add_argument("--output", required=True, help="fsspec URL of the output folder of semantic mask Parquet files")
    p.add_argument("--classes", type=int, required=True, metavar="K",
                   help=f"number of pseudo-classes, 2..{MAX_CLASSES} (mask pixels are class ids; 255 is none)")
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                   help=f"train k-means on at most N descriptors drawn uniformly over the input (default "
                        f"{DEFAULT_SAMPLE:,}: the driver holds them as float32, 4 x dim bytes each, e.g. 1 GB at "
                        "1,280 dims)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of k-means (default 0)")
    p.add_argument("--iterations", type=int, default=20, help="Lloyd iterations of each k-means run (default 20)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="default 1")
    p.add_argument("--memory-per-actor", type=float, default=ACTOR_MEMORY / GIB, metavar="GIB",
                   help=f"host memory each actor reserves, in GiB (default {ACTOR_MEMORY / GIB:g}; 0 reserves none)")
    add_ray_arguments(p, "actors (default: as many as the cluster can host now)")
    return p


def job_from_args(args: argparse.Namespace) -> ClusterJob:
    """The `ClusterJob` the parsed arguments describe; raises `ValueError` naming a bad value."""
    if not 2 <= args.classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be in 2..{MAX_CLASSES} (mask pixels are class ids, 255 is none), "
                         f"got {args.classes}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be in 0..{MAX_SEED}, got {args.seed}")
    check_at_least([("--sample", args.sample, args.classes), ("--iterations", args.iterations, 1),
                    ("--cpus-per-actor", args.cpus_per_actor, 0.001), ("--memory-per-actor", args.memory_per_actor, 0),
                    *ray_minimums(args)])
    return ClusterJob(input=args.input, output=args.output, classes=args.classes, sample=args.sample, seed=args.seed,
                      iterations=args.iterations, num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor,
                      memory_per_actor=args.memory_per_actor * GIB, max_retries=args.max_retries,
                      retry_delay=args.retry_delay, storage_options=parse_storage_options(args.storage_options))


def checked_job(args: argparse.Namespace) -> ClusterJob:
    """`job_from_args`, then what can be refused before anything heavy starts: an input or output that is a file,
    a store without credentials or that does not answer (one request each)."""
    job = job_from_args(args)
    Location(job.input, job.storage_options).check_folder("--input", INPUT_ADVICE)
    Location(job.output, job.storage_options).check_folder("--output", OUTPUT_ADVICE)
    return job


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    job = job_or_exit(checked_job, args)
    from pipeline.clustering.driver import execute, needs_ray, plan
    from pipeline.execution.capacity import JobError
    from pipeline.store.dataset import OutputConflict

    return run_ray_job(lambda: plan(job), needs_ray, lambda planned: execute(planned, progress=not args.no_progress),
                       args.address, (ValueError, StorageError, OutputConflict, JobError, ConnectionError),
                       lambda summary: (f"{summary.images_ok} image(s) given classes, {summary.images_failed} error "
                                        f"row(s), {summary.shards_written} shard(s) written, {summary.shards_skipped} "
                                        f"already done, {summary.shards_failed} failed; {job.classes} classes "
                                        f"({summary.centroids} centroids, {summary.sample:,} descriptors) in "
                                        f"{summary.output}"))


if __name__ == "__main__":
    sys.exit(main())
