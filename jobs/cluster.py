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
import json
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

# Only light modules before the arguments are checked: --help and flag errors answer at once, without Ray or faiss.
from diffseg.arguments import OneLineParser  # noqa: E402
from pipeline.clustering.job import ACTOR_MEMORY, DEFAULT_SAMPLE, MAX_CLASSES, ClusterJob  # noqa: E402
from pipeline.execution.capacity import GIB  # noqa: E402
from pipeline.labeling.storage import StorageError, parse_storage_options  # noqa: E402

MAX_SEED = 2**31 - 1
"""faiss takes a C int seed."""


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
    p.add_argument("--num-actors", type=int, default=None, help="default: as many as the cluster can host now")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="default 1")
    p.add_argument("--memory-per-actor", type=float, default=ACTOR_MEMORY / GIB, metavar="GIB",
                   help=f"host memory each actor reserves, in GiB (default {ACTOR_MEMORY / GIB:g}; 0 reserves none)")
    p.add_argument("--max-retries", type=int, default=5, help="further attempts per failed shard (default 5)")
    p.add_argument("--retry-delay", type=float, default=5.0,
                   help="seconds before a failed shard's first retry, doubling for each further one up to 60 "
                        "(default 5)")
    p.add_argument("--storage-options", default=None, help="JSON object of fsspec options for input and output")
    p.add_argument("--address", default=None,
                   help="Ray cluster address, or auto for a running local one (default: RAY_ADDRESS, else a new "
                        "local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def job_from_args(args: argparse.Namespace) -> ClusterJob:
    """The `ClusterJob` the parsed arguments describe; raises `ValueError` naming a bad value."""
    if not 2 <= args.classes <= MAX_CLASSES:
        raise ValueError(f"--classes must be in 2..{MAX_CLASSES} (mask pixels are class ids, 255 is none), "
                         f"got {args.classes}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be in 0..{MAX_SEED}, got {args.seed}")
    for flag, value, least in (("--sample", args.sample, args.classes), ("--iterations", args.iterations, 1),
                               ("--num-actors", args.num_actors, 1), ("--cpus-per-actor", args.cpus_per_actor, 0.001),
                               ("--memory-per-actor", args.memory_per_actor, 0), ("--max-retries", args.max_retries, 0),
                               ("--retry-delay", args.retry_delay, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least:g}, got {value:g}")
    return ClusterJob(input=args.input, output=args.output, classes=args.classes, sample=args.sample, seed=args.seed,
                      iterations=args.iterations, num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor,
                      memory_per_actor=args.memory_per_actor * GIB, max_retries=args.max_retries,
                      retry_delay=args.retry_delay, storage_options=parse_storage_options(args.storage_options))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        job = job_from_args(args)
    except (ValueError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from pipeline.clustering.driver import execute, needs_ray, plan
    from pipeline.execution.capacity import JobError
    from pipeline.execution.cluster import connect, disconnect
    from pipeline.labeling.output import OutputConflict

    try:
        planned = plan(job)
        if needs_ray(planned):
            connect(args.address)
        summary = execute(planned, progress=not args.no_progress)
    except (ValueError, StorageError, OutputConflict, JobError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        disconnect()
    print(f"{summary.images_ok} image(s) given classes, {summary.images_failed} error row(s), "
          f"{summary.shards_written} shard(s) written, {summary.shards_skipped} already done, "
          f"{summary.shards_failed} failed; {job.classes} classes ({summary.centroids} centroids, "
          f"{summary.sample:,} descriptors) in {summary.output}", file=sys.stderr)
    print(json.dumps(summary.to_dict()), flush=True)
    return 1 if summary.shards_failed else 0


if __name__ == "__main__":
    sys.exit(main())
