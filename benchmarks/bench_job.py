"""Job benchmark: throughput of the Ray labeling job against an in-process `DiffSeg.segment` loop.

Two suites, each on the same images, machine and device (`--device`: the loop runs there, and the job's one
actor takes that device: a GPU, or all CPUs):

- full: the full-size SD 1.5 architecture with random weights (`sd15-random`), the bundled sample photos
  (repeated to `--images`, processed at 512 px), batch size `--batch` (default: 8 on a GPU, 1 on CPU). Target:
  the job's labeling throughput (after its actor has loaded the model) >= 0.95 of the loop's; on an H100/H200-class
  GPU, >= 100 images/s.
- tiny: the `tiny` model on `--tiny-images` small generated photos (processed at 128 px, so the model
  costs little and the job's own cost shows), shards of 100, one torch thread on both sides: the job's
  overhead per image. (With several threads, the tiny model's many small kernels make OpenMP's spin-waiting
  dominate, and any second thread that touches torch in the process doubles their cost; that measures
  OpenMP, not the job.) CPU only.

    python benchmarks/bench_job.py [--suite full tiny] [--device cpu|cuda] [--images 8] [--batch N]
                                   [--tiny-images 1000] [--model sd15-random] [--resolution 512] [--address ADDRESS]
                                   [--json FILE]

Smoke run (both suites, the full one on the tiny model at 128 px, in seconds):
`--model tiny --resolution 128 --images 1 --tiny-images 1`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_driver import add_address, start_ray  # noqa: E402
from diffseg import DiffSeg, DiffSegConfig  # noqa: E402
from pipeline.labeling.driver import run  # noqa: E402
from pipeline.labeling.job import LabelJob  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def loop_seconds(model: str, config: DiffSegConfig, files: list[Path], threads: int, device: str,
                 batch: int) -> float:
    """Seconds for `DiffSeg.segment` over the files, `batch` at a time, model already loaded, after one untimed
    warm-up batch (the job's timing includes its actor's first batch, so the ratio errs against the job)."""
    torch.set_num_threads(threads)
    segmenter = DiffSeg.from_pretrained(model, config=config, device=device)
    segmenter.segment(files[:batch], batch_size=batch)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for first in range(0, len(files), batch):
        segmenter.segment(files[first:first + batch], batch_size=batch)
    elapsed = time.perf_counter() - start
    del segmenter
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return elapsed


def suite(name: str, model: str, config: DiffSegConfig, files: list[Path], shard_size: int, cpus: int,
          work: Path, device: str, batch: int) -> dict[str, Any]:
    loop = loop_seconds(model, config, files, cpus, device, batch)
    gpus = 1 if device == "cuda" else 0
    summary = run(LabelJob(input=str(files[0].parent), output=str(work / f"{name}-out"), model=model, config=config,
                           num_actors=1, gpus_per_actor=gpus, cpus_per_actor=cpus, shard_size=shard_size,
                           batch_size=batch), progress=False)
    assert summary.images_ok == len(files) and summary.shards_failed == 0
    labeling = summary.seconds - summary.startup_seconds
    count = len(files)
    print(f"\n[{name}] model {model}, {count} images, resolution {config.resolution}, device {device}, batch {batch}, "
          f"{cpus} CPU(s) for the actor")
    print(f"  in-process loop:  {loop:8.2f} s  {count / loop:7.2f} img/s  {1000 * loop / count:8.1f} ms/img")
    print(f"  job, labeling:    {labeling:8.2f} s  {count / labeling:7.2f} img/s  {1000 * labeling / count:8.1f} ms/img"
          f"   (job/loop throughput {loop / labeling:.3f})")
    print(f"  job, end to end:  {summary.seconds:8.2f} s  "
          f"(startup: actor + model load {summary.startup_seconds:.2f} s)")
    print(f"  job overhead per image: {1000 * (labeling - loop) / count:+.1f} ms", flush=True)
    return {"suite": name, "model": model, "images": count, "device": device, "batch": batch, "cpus": cpus,
            "loop_s": loop, "job_labeling_s": labeling, "job_total_s": summary.seconds,
            "loop_images_per_s": count / loop, "job_images_per_s": count / labeling, "job_over_loop": loop / labeling}


def sample_photos(folder: Path, count: int) -> list[Path]:
    """`count` copies of the bundled photos (distinct files, repeating the samples)."""
    folder.mkdir()
    samples = sorted(SAMPLES.glob("*.jpg"))
    files = []
    for i in range(count):
        files.append(folder / f"{i:05d}-{samples[i % len(samples)].name}")
        shutil.copy(samples[i % len(samples)], files[-1])
    return files


def tiny_photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        files.append(folder / f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(files[-1])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=["full", "tiny"], default=["full", "tiny"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=8, help="images for the full-size suite")
    parser.add_argument("--batch", type=int, default=None, help="full suite: default 8 on a GPU, 1 on CPU")
    parser.add_argument("--tiny-images", type=int, default=1000)
    parser.add_argument("--model", default="sd15-random", help="the full suite's model (tiny: a smoke run)")
    parser.add_argument("--resolution", type=int, default=512, help="the full suite's processing size in px")
    add_address(parser)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    gpu = args.device == "cuda"
    machine = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    print(f"{machine}, {cpus} CPUs, torch {torch.__version__}, ray {ray.__version__}")
    start_ray(args.address, cpus, object_store_mib=512, gpus=1 if gpu else 0)
    work = Path(tempfile.mkdtemp(prefix="bench-job-"))
    results = []
    try:
        if "full" in args.suite:
            files = sample_photos(work / "full", args.images)
            batch = args.batch or (8 if gpu else 1)
            results.append(suite("full", args.model, DiffSegConfig(resolution=args.resolution), files,
                                 shard_size=max(2, 4 * batch), cpus=cpus, work=work, device=args.device, batch=batch))
        if "tiny" in args.suite:
            files = tiny_photos(work / "tiny", args.tiny_images)
            results.append(suite("tiny", "tiny", DiffSegConfig(resolution=128), files, shard_size=100, cpus=1,
                                 work=work, device="cpu", batch=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"machine": machine, "cpus": cpus, "torch": torch.__version__, "results": results}, file,
                      indent=2)


if __name__ == "__main__":
    main()
