"""Worker benchmark: the labeling actor in-process, without Ray, on local shards of 2-megapixel JPEG photos.

`--photos` JPEGs of 1600x1200 (quality 90; random windows of the sample photos with film grain, so that they are
300-700 KB as real 2-MP photos are) are listed by the job's own planning (`pipeline.store.inputs.inventory`)
and cut into shards of `--shard-size` images, repeating the photos until `--images` images. One `LabelWorker` (the
class the job runs as a Ray actor) with `--threads` CPU threads labels them in this process, two shards at a time as
the driver gives an actor: reading, decoding, the model (`--model` at `--resolution` px, `--dtype`, `--batch`
images per forward), segment statistics, PNG and Parquet, every shard written to a temporary output folder.

Prints and writes (`--json`): the model's load time in s; a warm-up shard's time in s (first kernels and
allocations, not counted); images/s after load and warm-up; the GPU busy fraction in [0, 1] over that time (the
mean of `nvidia-smi`'s utilization sampled every 100 ms; null on CPU or without nvidia-smi); the peak GPU memory
in GiB (the process's peak RSS on CPU); the process's CPU seconds per image.

Nothing on this path imports Ray: the offline GPU host has none (`benchmarks/gpu_check.py`).

    python benchmarks/bench_worker.py [--model sd15-random] [--device cuda] [--dtype float16] [--resolution 512]
                                      [--batch 8] [--threads 8] [--photos 256] [--images 2048] [--json FILE]

Smoke run (seconds on a CPU, figures meaningless): `--model tiny --device cpu --resolution 128 --size 320x240
--batch 2 --threads 2 --photos 8 --images 16 --shard-size 8 --warmup 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.bench_core import peak_gib, reset_peak  # noqa: E402
from diffseg import DiffSegConfig  # noqa: E402
from pipeline.labeling.planning import inventory  # noqa: E402
from pipeline.labeling.worker import LabelWorker, Placement, WorkerSettings  # noqa: E402
from pipeline.store.inputs import Shard, SourceFile  # noqa: E402
from pipeline.store.location import Location  # noqa: E402

SIZE = (1600, 1200)
"""Default `(width, height)` of the photos: 2 megapixels."""
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SHARDS_IN_FLIGHT = 2
"""Shards a worker processes at once, as the driver gives an actor (`executor.IN_FLIGHT_PER_ACTOR`; the driver
imports Ray, so it is not imported here)."""
SAMPLE_MS = 100
"""nvidia-smi's sampling period, in milliseconds."""


def write_photos(folder: Path, count: int, size: tuple[int, int], threads: int, seed: int = 0) -> list[int]:
    """Write `count` JPEG photos of `size` `(width, height)` to `folder` with `threads` threads; returns their sizes
    in bytes.

    Each is a random window (maybe mirrored) of one of a few grained canvases made from the sample photos, as
    `bench_actor.write_photos` makes them (that module imports Ray)."""
    rng = np.random.default_rng(seed)
    samples = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.jpg"))]
    canvases = [_canvas(samples[index % len(samples)], size, rng) for index in range(min(count, 2 * len(samples)))]
    windows = [(index, canvases[index % len(canvases)], rng.random(3)) for index in range(count)]

    def write(item: tuple[int, Image.Image, np.ndarray]) -> int:
        index, canvas, (x, y, flip) = item
        left, top = int(x * (canvas.width - size[0])), int(y * (canvas.height - size[1]))
        photo = canvas.crop((left, top, left + size[0], top + size[1]))
        if flip < 0.5:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"photo-{index:05d}.jpg"
        photo.save(path, format="JPEG", quality=90)
        return path.stat().st_size

    with ThreadPoolExecutor(threads) as pool:  # PIL's JPEG encoder releases the GIL
        return list(pool.map(write, windows))


def _canvas(sample: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random window of `sample` with the aspect of `size`, scaled to 1.15x `size`, its brightness jittered and
    grain added."""
    width, height = round(size[0] * 1.15), round(size[1] * 1.15)
    cut_w = min(sample.width, sample.height * size[0] / size[1]) * rng.uniform(0.7, 1.0)
    cut_h = cut_w * size[1] / size[0]
    left, top = rng.uniform(0, sample.width - cut_w), rng.uniform(0, sample.height - cut_h)
    scaled = sample.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + cut_w, top + cut_h))
    grain = rng.normal(0, rng.uniform(4, 7), (height, width, 3)).astype(np.float32)
    pixels = np.asarray(scaled, dtype=np.float32) * rng.uniform(0.85, 1.15) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def shards(source: Location, images: int, shard_size: int) -> list[Shard]:
    """Shards of `shard_size` images (the last may be shorter), `images` in all: the photos under `source` as the
    job's planning lists them, repeated as needed (names `part-NNNNN`, as the job names image-folder shards)."""
    files: list[SourceFile] = [file for shard in inventory(source).shards for file in shard.files]
    cycled = [files[index % len(files)] for index in range(images)]
    return [Shard(f"part-{start // shard_size:05d}", "images", tuple(cycled[start:start + shard_size]))
            for start in range(0, images, shard_size)]


class GpuBusy:
    """The GPU's busy fraction while in the `with` block: the mean of `nvidia-smi`'s `utilization.gpu` (the share
    of time a kernel ran, in percent) sampled every `SAMPLE_MS` ms by a background process. `fraction` is None
    without nvidia-smi or without samples."""

    def __init__(self, device: torch.device) -> None:
        self._command = None
        if device.type == "cuda" and shutil.which("nvidia-smi"):
            # nvidia-smi numbers GPUs as the machine does; CUDA_VISIBLE_DEVICES may have renumbered ours.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
            gpu = visible or str(device.index or 0)
            self._command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                             f"--loop-ms={SAMPLE_MS}", f"--id={gpu}"]
        self.samples: list[float] = []

    def __enter__(self) -> GpuBusy:
        if self._command:
            self._process = subprocess.Popen(self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc: object) -> None:
        if self._command:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
            self._reader.join(timeout=5)

    @property
    def fraction(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def label(worker: LabelWorker, work: list[Shard]) -> tuple[int, int]:
    """Process `work` on `worker`, `SHARDS_IN_FLIGHT` shards at a time; returns images ok and failed."""
    with ThreadPoolExecutor(SHARDS_IN_FLIGHT, thread_name_prefix="bench-shard") as pool:
        markers = list(pool.map(lambda shard: worker.process(shard, "bench-worker"), work))
    return sum(m["images_ok"] for m in markers), sum(m["images_failed"] for m in markers)


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Write the photos, load the worker's model, label a warm-up shard then the measured ones; the figures."""
    inputs, output = folder / "in", folder / "out"
    inputs.mkdir()
    sizes = write_photos(inputs, args.photos, args.size, args.threads)
    source = Location(str(inputs))
    measured = shards(source, args.images, args.shard_size)
    warmup = [replace(measured[0], name="warmup", files=measured[0].files[:args.warmup])]
    settings = WorkerSettings(model=args.model, config=DiffSegConfig(resolution=args.resolution), device=args.device,
                              dtype=args.dtype, batch_size=args.batch, threads=args.threads)
    worker = LabelWorker(settings, Placement(source, Location(str(output))))
    device = torch.device(args.device)
    started = time.perf_counter()
    answer = worker.load()
    if "error" in answer:
        raise SystemExit(f"model: {answer['error']}")
    loaded = time.perf_counter()
    label(worker, warmup)
    warm = time.perf_counter()
    reset_peak(device)
    cpu = cpu_seconds()
    with GpuBusy(device) as busy:
        ok, failed = label(worker, measured)
        seconds = time.perf_counter() - warm
    cpu = cpu_seconds() - cpu
    return {"model": args.model, "device": str(device), "dtype": answer["info"]["dtype"],
            "resolution": args.resolution, "batch": args.batch, "threads": args.threads,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "photos": args.photos, "photo_size": list(args.size), "photo_kb": [min(sizes) // 1024, max(sizes) // 1024],
            "shards": len(measured), "images": ok + failed, "images_failed": failed,
            "load_s": loaded - started, "warmup_s": warm - loaded, "seconds": seconds,
            "images_per_s": (ok + failed) / seconds, "gpu_busy": busy.fraction, "gpu_busy_samples": len(busy.samples),
            "peak_gib": peak_gib(device), "cpu_ms_per_image": 1000 * cpu / (ok + failed)}


def summary(f: dict[str, Any]) -> str:
    """`run`'s figures in one line."""
    busy = "n/a" if f["gpu_busy"] is None else f"{f['gpu_busy']:.2f}"
    return (f"{f['model']} at {f['resolution']} px, {f['dtype']}, batch {f['batch']}, {f['threads']} threads, "
            f"{f['device']} ({f['gpu'] or 'CPU'}): load {f['load_s']:.1f} s | warm-up {f['warmup_s']:.1f} s | "
            f"{f['images']} images ({f['images_failed']} failed) in {f['seconds']:.1f} s: "
            f"{f['images_per_s']:.1f} images/s | GPU busy {busy} | peak {f['peak_gib']:.2f} GiB | "
            f"CPU {f['cpu_ms_per_image']:.1f} ms/image")


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd15-random", help="built-in model or diffusers folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 on a GPU, float32 on CPU")
    parser.add_argument("--resolution", type=int, default=512, help="processing size of the longer side, px")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--threads", type=int, default=8, help="the worker's CPU threads")
    parser.add_argument("--photos", type=int, default=256, help="distinct JPEG files")
    parser.add_argument("--size", type=_size, default=SIZE, help="of the photos, WIDTHxHEIGHT (default 1600x1200)")
    parser.add_argument("--images", type=int, default=2048, help="images labeled after the warm-up")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=16, help="images of the warm-up shard (not counted)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        figures = run(args, Path(folder))
    print(summary(figures), flush=True)
    if sys.modules.get("ray") is not None:  # the offline GPU host has no Ray: fail here, where it is cheap to see
        raise SystemExit("ray was imported on the worker benchmark's path")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
