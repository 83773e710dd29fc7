"""Job benchmark: throughput of the Ray labeling job against an in-process `DiffSeg.segment` loop.

Two suites, each on the same images and machine:

- full: the full-size SD 1.5 architecture with random weights (`sd15-random`), the bundled sample photos
  (repeated to `--images`), batch size 1. The job runs one actor holding all CPUs. Target: the job's
  labeling throughput (after its actors have loaded the model) >= 0.9 of the loop's.
- tiny: the `tiny` model on `--tiny-images` small generated photos (processed at 128 px, so the model
  costs little and the job's own cost shows), shards of 100, one torch thread on both sides: the job's
  overhead per image. (With several threads, the tiny model's many small kernels make OpenMP's spin-waiting
  dominate, and any second thread that touches torch in the process doubles their cost; that measures
  OpenMP, not the job.)

    python benchmarks/bench_job.py [--suite full tiny] [--images 8] [--tiny-images 1000]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg import DiffSeg, DiffSegConfig  # noqa: E402
from pipeline.labeling.driver import run  # noqa: E402
from pipeline.labeling.job import LabelJob  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def loop_seconds(model: str, config: DiffSegConfig, files: list[Path], threads: int) -> float:
    """Seconds for `DiffSeg.segment` over the files one by one, model already loaded."""
    torch.set_num_threads(threads)
    segmenter = DiffSeg.from_pretrained(model, config=config, device="cpu")
    start = time.perf_counter()
    for file in files:
        segmenter.segment([file])
    elapsed = time.perf_counter() - start
    del segmenter
    gc.collect()
    return elapsed


def job_run(model: str, config: DiffSegConfig, folder: Path, output: Path, shard_size: int, cpus: int):
    return run(LabelJob(input=str(folder), output=str(output), model=model, config=config, num_actors=1,
                        cpus_per_actor=cpus, shard_size=shard_size), progress=False)


def suite(name: str, model: str, config: DiffSegConfig, files: list[Path], shard_size: int, cpus: int,
          work: Path) -> None:
    loop = loop_seconds(model, config, files, cpus)
    summary = job_run(model, config, files[0].parent, work / f"{name}-out", shard_size, cpus)
    labeling = summary.seconds - summary.startup_seconds
    count = len(files)
    print(f"\n[{name}] model {model}, {count} images, resolution {config.resolution}, {cpus} CPU thread(s)")
    print(f"  in-process loop:  {loop:8.2f} s  {count / loop:7.3f} img/s  {1000 * loop / count:8.1f} ms/img")
    print(f"  job, labeling:    {labeling:8.2f} s  {count / labeling:7.3f} img/s  {1000 * labeling / count:8.1f} ms/img"
          f"   (job/loop throughput {loop / labeling:.3f})")
    print(f"  job, end to end:  {summary.seconds:8.2f} s  "
          f"(startup: actor + model load {summary.startup_seconds:.2f} s)")
    print(f"  job overhead per image: {1000 * (labeling - loop) / count:+.1f} ms")
    assert summary.images_ok == count and summary.shards_failed == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=["full", "tiny"], default=["full", "tiny"])
    parser.add_argument("--images", type=int, default=8, help="images for the full-size suite")
    parser.add_argument("--tiny-images", type=int, default=1000)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs, torch {torch.__version__}, "
          f"ray {ray.__version__}")
    ray.init(address="local", num_cpus=cpus, num_gpus=0, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    try:
        if "full" in args.suite:
            folder = work / "full"
            folder.mkdir()
            samples = sorted(SAMPLES.glob("*.jpg"))
            files = []
            for i in range(args.images):
                files.append(folder / f"{i:03d}-{samples[i % len(samples)].name}")
                shutil.copy(samples[i % len(samples)], files[-1])
            suite("full", "sd15-random", DiffSegConfig(), files, shard_size=2, cpus=cpus, work=work)
        if "tiny" in args.suite:
            folder = work / "tiny"
            folder.mkdir()
            rng = np.random.default_rng(0)
            files = []
            for i in range(args.tiny_images):
                files.append(folder / f"{i:05d}.png")
                Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(files[-1])
            suite("tiny", "tiny", DiffSegConfig(resolution=128), files, shard_size=100, cpus=1, work=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
