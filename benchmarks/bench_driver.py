"""Driver benchmark: planning and scheduling tens of thousands of shards, with a no-op model.

The input is a folder of `--shards` tiny files cut into shards of one image, labeled through the job's own
path (`pipeline.labeling.driver.prepare` and `execute`: listing, the work queue, Ray actors, reading, the mask
Parquet file and `_done/` marker of every shard) by actors whose model does nothing: what is measured is
the job around the model. Prints the planning time, shards per second, the peak number of shards in flight
and the driver process's peak memory (RSS), before and after the run.

    python benchmarks/bench_driver.py [--shards 20000] [--actors 2] [--address ADDRESS] [--json FILE]

Smoke run: `--shards 4 --actors 1`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg.preprocess import PreparedImage  # noqa: E402
from diffseg.segment import Segmentation  # noqa: E402
from pipeline.labeling.driver import execute, plan  # noqa: E402
from pipeline.labeling.job import LabelJob  # noqa: E402
from pipeline.labeling.worker import LabelWorker  # noqa: E402


class NoopSegmenter:
    """Stands in for `DiffSeg`: no decoding, no model, a one-segment 8x8 mask per image."""

    info: dict[str, Any] = {"model": "noop", "source": "benchmark", "revision": None, "weights": None,
                            "random_weights": True}
    device = torch.device("cpu")

    def prepare(self, data: bytes, name: str | None = None) -> PreparedImage:
        return PreparedImage(name or "", torch.zeros(3, 64, 64), (8, 8), (8, 8))

    def forward_batch(self, images: list[PreparedImage], batch_size: int = 1) -> list[torch.Tensor]:
        return [torch.zeros(image.mask_size, dtype=torch.int64) for image in images]

    def label_batch_scored(self, images: list[PreparedImage], maps: list[torch.Tensor]) -> list[Segmentation]:
        """The label maps as the model's, every segment with score 0.5 and stability 1."""
        return [Segmentation(labels, torch.full((int(labels.max()) + 1,), 0.5), torch.ones(int(labels.max()) + 1))
                for labels in maps]


class NoopWorker(LabelWorker):
    def build_segmenter(self) -> NoopSegmenter:
        return NoopSegmenter()


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_ray(address: str | None, cpus: int, object_store_mib: int, gpus: int = 0) -> None:
    """Join the Ray cluster at `address`, else start a private local one of `cpus` CPUs, `gpus` GPUs and an object
    store of `object_store_mib` (Ray's default takes 30% of the RAM), which `ray.shutdown` or this process's end
    stops. Joining saves a second local cluster where one runs already (the tests' shared one)."""
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", num_cpus=cpus, num_gpus=gpus,
                 object_store_memory=object_store_mib * 2**20)


def add_address(parser: argparse.ArgumentParser) -> None:
    """The `--address` option of the benchmarks that use Ray."""
    parser.add_argument("--address", default=None,
                        help="join the Ray cluster at this address (default: start a private local one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20000)
    parser.add_argument("--actors", type=int, default=2)
    add_address(parser)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for i in range(args.shards):
            (inputs / f"{i:06d}.png").write_bytes(b"not decoded by the no-op model")
        start_ray(args.address, args.actors, object_store_mib=100)
        before = peak_mib()
        started = time.perf_counter()
        planned_job = plan(LabelJob(input=str(inputs), output=str(Path(folder) / "out"), model="noop", shard_size=1,
                                num_actors=args.actors, cpus_per_actor=1, memory_per_actor=0))  # no model to hold
        planned = time.perf_counter() - started
        summary = execute(planned_job, progress=False, worker=NoopWorker)
        ray.shutdown()
    scheduling = summary.seconds - planned - summary.startup_seconds
    print(f"{platform.processor() or platform.machine()}, ray {ray.__version__}, {args.actors} actors")
    print(f"{args.shards} shards: planned in {planned:.1f} s, labeled in {scheduling:.1f} s after the actors started "
          f"({summary.shards_written / scheduling:.0f} shards/s), {summary.shards_failed} failed, "
          f"at most {summary.in_flight_peak} in flight")
    print(f"driver peak RSS: {before:.0f} MiB after ray.init, {peak_mib():.0f} MiB at the end")
    if args.json:
        figures = {"shards": args.shards, "actors": args.actors, "planning_s": planned, "labeling_s": scheduling,
                   "shards_written": summary.shards_written, "shards_failed": summary.shards_failed,
                   "shards_per_s": summary.shards_written / scheduling, "in_flight_peak": summary.in_flight_peak,
                   "driver_after_init_mib": before, "driver_peak_mib": peak_mib()}
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
