"""Pseudo-class benchmark: millions of synthetic descriptors over thousands of shard files, clustered by the job.

A labeling output is written in a temporary folder (`--per-shard` descriptors of `--dim` dimensions per shard file,
10 segments per image, a small mask per image, planted classes plus noise), then clustered through the job's own
path (`pipeline.clustering.driver.plan` and `execute`: counting, sampling, faiss k-means, the Ray actors writing
every shard's semantic masks) on a local Ray with `--actors` one-CPU actors. Each size runs in a process of its
own, so that peak memories do not carry over. Prints, per size, the time of each phase and the peak memory (RSS)
of the driver and of the busiest actor: with the same `--sample`, neither grows with the dataset.

    python benchmarks/bench_cluster.py [--descriptors 500000 2000000] [--dim 256] [--sample 500000]
                                       [--address ADDRESS] [--json FILE]

Smoke run: `--descriptors 2000 --per-shard 500 --dim 8 --classes 4 --sample 1000 --actors 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_driver import add_address, start_ray  # noqa: E402
from diffseg.visualize import label_png  # noqa: E402
from pipeline.clustering.driver import execute, plan  # noqa: E402
from pipeline.clustering.job import ClusterJob  # noqa: E402
from pipeline.clustering.worker import ClassWorker  # noqa: E402
from pipeline.store.dataset import OutputDataset, Row, encode_descriptors  # noqa: E402
from pipeline.store.location import Location  # noqa: E402

SEGMENTS = 10
"""Segments per image."""
MASK = label_png(np.repeat(np.arange(SEGMENTS), 4)[None].repeat(24, axis=0))
"""Every image's mask: 40 x 24 pixels, 10 vertical bands."""


class MeasuredWorker(ClassWorker):
    """A `ClassWorker` that records its process's peak RSS in a file beside the output after every call."""

    def count(self, shard: str) -> int:
        try:
            return super().count(shard)
        finally:
            self._record()

    def sample(self, shard: str, size: int, seed: list[int]) -> np.ndarray:
        try:
            return super().sample(shard, size, seed)
        finally:
            self._record()

    def assign(self, shard: str, centroids: np.ndarray, provenance: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().assign(shard, centroids, provenance)
        finally:
            self._record()

    def _record(self) -> None:
        folder = Path(self.output.location.root).parent / "rss"
        folder.mkdir(exist_ok=True)
        (folder / str(os.getpid())).write_text(str(peak_mib()))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_input(folder: Path, descriptors: int, per_shard: int, dim: int, classes: int) -> int:
    """A labeling output with `descriptors` descriptors in shards of `per_shard`; returns the number of shards."""
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((classes, dim)).astype(np.float32)
    output = OutputDataset(Location(str(folder)))
    output.claim({"config": {}, "input": "file:///synthetic", "model": {"model": "synthetic"}, "descriptors": True})
    shards = -(-descriptors // per_shard)
    for shard in range(shards):
        images = min(per_shard, descriptors - shard * per_shard) // SEGMENTS
        vectors = directions[rng.integers(0, classes, images * SEGMENTS)]
        vectors += rng.standard_normal(vectors.shape, dtype=np.float32)
        rows = [Row(f"{shard}/{i}.jpg", f"file:///synthetic/{shard}/{i}.jpg", 40, 24, MASK, SEGMENTS, [],
                    descriptors=encode_descriptors(vectors[i * SEGMENTS:(i + 1) * SEGMENTS])) for i in range(images)]
        output.write(f"part-{shard:05d}", rows, {})
    return shards


def one(args: argparse.Namespace, descriptors: int) -> dict[str, Any]:
    """Write the input, cluster it, and return the figures."""
    import ray

    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        began = time.perf_counter()
        shards = write_input(Path(folder) / "in", descriptors, args.per_shard, args.dim, args.classes)
        written = time.perf_counter() - began
        start_ray(args.address, args.actors, object_store_mib=300)
        before = peak_mib()
        job = ClusterJob(input=str(Path(folder) / "in"), output=str(Path(folder) / "out"), classes=args.classes,
                         sample=args.sample, num_actors=args.actors, memory_per_actor=0)
        summary = execute(plan(job), progress=False, worker=MeasuredWorker)
        ray.shutdown()
        workers = [float(path.read_text()) for path in (Path(folder) / "rss").iterdir()]
    return {"descriptors": descriptors, "shards": shards, "images": summary.images_ok, "sample": summary.sample,
            "write_input_s": written, "sample_s": summary.sample_seconds, "train_s": summary.train_seconds,
            "assign_s": summary.assign_seconds, "total_s": summary.seconds, "failed": summary.shards_failed,
            "driver_after_init_mib": before, "driver_peak_mib": peak_mib(), "worker_peak_mib": max(workers),
            "sample_mib": summary.sample * args.dim * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--descriptors", type=int, nargs="+", default=[500_000, 2_000_000],
                        help="dataset sizes, each run in a process of its own")
    parser.add_argument("--per-shard", type=int, default=1_000, help="descriptors per shard file (default 1,000)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=27)
    parser.add_argument("--sample", type=int, default=500_000)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="folder for the temporary dataset (default: the system's)")
    add_address(parser)
    parser.add_argument("--json", help="also write the figures of every size to this JSON file")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args, args.one)))
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.actors} actors, dim {args.dim}, "
          f"K {args.classes}, sample {args.sample:,}")
    results = []
    for size in args.descriptors:
        command = [sys.executable, __file__, "--one", str(size), *sys.argv[1:]]
        result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # its errors show
        f = json.loads(result.stdout.splitlines()[-1])
        results.append(f)
        print(f"{size:,} descriptors, {f['shards']:,} shards, {f['images']:,} images (input written in "
              f"{f['write_input_s']:.0f} s)")
        print(f"    sampling {f['sample_s']:.1f} s | training on {f['sample']:,} {f['train_s']:.1f} s | assignment "
              f"{f['assign_s']:.1f} s ({f['images'] / f['assign_s']:,.0f} images/s) | total {f['total_s']:.1f} s | "
              f"{f['failed']} shard(s) failed")
        print(f"    peak RSS: driver {f['driver_peak_mib']:,.0f} MiB ({f['driver_after_init_mib']:,.0f} after "
              f"ray.init; the sample is {f['sample_mib']:,.0f} MiB as float32), busiest actor "
              f"{f['worker_peak_mib']:,.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"dim": args.dim, "classes": args.classes, "actors": args.actors,
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
