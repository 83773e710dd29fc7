"""Actor benchmark: the CPU side of one labeling actor on 2-megapixel JPEG photos, with a zero-cost model.

`--images` photos of 1600x1200 (JPEG quality 90, 300-700 KB, cut from the sample photos with film grain so that
no two files are alike) are labeled through the job's own path (`pipeline.labeling.driver.plan` and `execute`,
one Ray actor of `--cpus-per-actor` CPUs, shards of `--shard-size` images) by an actor whose model costs nothing:
it prepares every image with the job's real preprocessing (`diffseg.preprocess.prepare`, default settings) and
returns a precomputed label map of 10-25 smooth segments at the image's size, as uint8 (what the model gives up to
256 labels). What is measured is everything an actor does around its model: reading and decoding, segment
statistics, PNG encoding, Parquet writing.

The actor's threads are pinned to the first `--cpus-per-actor` cores, as if other actors had the rest of the
machine. Prints images/s after the actor started, CPU-ms per image (the actor process's user + system CPU time, from
`getrusage` in the actor, and the whole machine's busy time from /proc/stat, both between the end of model
loading and the end of the last shard), and a per-stage breakdown measured in this process on one thread.

    python benchmarks/bench_actor.py [--images 400] [--cpus-per-actor 2] [--shard-size 100] [--address ADDRESS]
                                     [--json FILE]

Smoke run: `--images 2 --shard-size 1 --stage-images 1 --cpus-per-actor 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_driver import add_address, start_ray  # noqa: E402
from diffseg import DiffSegConfig  # noqa: E402
from diffseg.preprocess import PreparedImage, prepare  # noqa: E402
from diffseg.regions import regions  # noqa: E402
from diffseg.segment import Segmentation  # noqa: E402
from diffseg.visualize import label_png  # noqa: E402
from pipeline.labeling.driver import execute, plan  # noqa: E402
from pipeline.labeling.job import LabelJob  # noqa: E402
from pipeline.labeling.worker import LabelWorker  # noqa: E402
from pipeline.store.dataset import Row, encode_shard  # noqa: E402
from pipeline.store.inputs import Shard  # noqa: E402
from synthetic.attention import random_partition  # noqa: E402

SIZE = (1600, 1200)
"""`(width, height)` of the photos: 2 megapixels."""
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CPU_FILE = "_actor_cpu.json"
"""Written by the actor under the output after every shard (bookkeeping name: dataset readers skip it)."""


def write_photos(folder: Path, count: int, seed: int = 0) -> list[int]:
    """Write `count` JPEG photos of `SIZE` to `folder`; returns their sizes in bytes.

    Each is a random 1600x1200 window (maybe mirrored) of one of a few grained canvases made from the sample
    photos: grain gives the high-frequency content that makes real 2-MP photos 300-700 KB at quality 90.
    """
    rng = np.random.default_rng(seed)
    canvases = [_canvas(Image.open(path).convert("RGB"), rng) for path in sorted(SAMPLES.glob("*.jpg"))
                for _ in range(2)]
    sizes = []
    for index in range(count):
        canvas = canvases[index % len(canvases)]
        left, top = rng.integers(0, canvas.width - SIZE[0]), rng.integers(0, canvas.height - SIZE[1])
        photo = canvas.crop((left, top, left + SIZE[0], top + SIZE[1]))
        if rng.random() < 0.5:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"photo-{index:05d}.jpg"
        photo.save(path, format="JPEG", quality=90)
        sizes.append(path.stat().st_size)
    return sizes


def _canvas(sample: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random 4:3 window of `sample` scaled to 1.15x `SIZE`, with its brightness jittered and grain added."""
    width, height = round(SIZE[0] * 1.15), round(SIZE[1] * 1.15)
    cut_w = min(sample.width, sample.height * 4 / 3) * rng.uniform(0.7, 1.0)
    cut_h = cut_w * 3 / 4
    left, top = rng.uniform(0, sample.width - cut_w), rng.uniform(0, sample.height - cut_h)
    scaled = sample.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + cut_w, top + cut_h))
    grain = rng.normal(0, rng.uniform(4, 7), (height, width, 3)).astype(np.float32)
    pixels = np.asarray(scaled, dtype=np.float32) * rng.uniform(0.85, 1.15) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def label_map(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """`(height, width)` uint8 labels like the model's: 10-25 segments with smooth, wavy boundaries. A random
    partition of the 1/25-scale grid (about the attention grid of a 2-MP photo), noised, upsampled bilinearly and
    argmaxed, as the model's proposals are. Takes a second: make it once per size."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(10, 26))
    coarse = random_partition(max(2, height // 25), max(2, width // 25), count, seed)
    proposals = F.one_hot(coarse, count).permute(2, 0, 1).float()
    proposals += 0.6 * torch.from_numpy(rng.random(proposals.shape, dtype=np.float32))
    upsampled = F.interpolate(proposals[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    _, labels = torch.unique(upsampled.argmax(0), return_inverse=True)  # consecutive, as the model's
    return labels.to(torch.uint8)


class ZeroCostSegmenter:
    """Stands in for `DiffSeg`: the job's real preprocessing, then a precomputed label map per mask size."""

    info: dict[str, Any] = {"model": "zero-cost", "source": "benchmark", "revision": None, "weights": None,
                            "random_weights": True}
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.config = DiffSegConfig()
        self._maps = {SIZE[::-1]: label_map(*SIZE[::-1])}  # made while the model "loads", not while labeling

    def prepare(self, data: bytes, name: str | None = None) -> PreparedImage:
        return prepare(data, self.config, name=name)

    def forward_batch(self, images: list[PreparedImage], batch_size: int = 1) -> list[torch.Tensor]:
        return [self.labels(image.mask_size) for image in images]

    def label_batch_scored(self, images: list[PreparedImage], maps: list[torch.Tensor]) -> list[Segmentation]:
        """The label maps as the model's, every segment with score 0.5 and stability 1."""
        return [Segmentation(labels, torch.full((int(labels.max()) + 1,), 0.5), torch.ones(int(labels.max()) + 1))
                for labels in maps]

    def labels(self, size: tuple[int, int]) -> torch.Tensor:
        """The label map of one mask size `(height, width)`, made on first use (on the model thread only)."""
        if size not in self._maps:
            self._maps[size] = label_map(*size)
        return self._maps[size]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle since boot, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def pin(cores: int) -> None:
    """Keep every thread of this process, and so every thread it starts later, on the first `cores` cores."""
    for thread in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(thread.name), range(cores))
        except ProcessLookupError:  # the thread ended meanwhile
            continue


class BenchWorker(LabelWorker):
    """The zero-cost model, pinned to as many cores as the actor has CPUs (Ray's CPUs are only a count: alone on
    a machine an actor would use every core), and the actor's CPU time since its model loaded, recorded after every
    shard."""

    def build_segmenter(self) -> ZeroCostSegmenter:
        return ZeroCostSegmenter()

    def load(self) -> dict[str, Any]:
        answer = super().load()
        pin(self.settings.threads or 1)
        self._cpu_lock = threading.Lock()
        self._images = 0
        self._started = (cpu_seconds(), machine_busy_seconds(), time.perf_counter())
        return answer

    def process(self, shard: Shard, run_id: str) -> dict[str, Any]:
        marker = super().process(shard, run_id)
        with self._cpu_lock:
            self._images += marker["rows"]
            cpu, busy, wall = self._started
            spent = {"images": self._images, "cpu": cpu_seconds() - cpu, "machine": machine_busy_seconds() - busy,
                     "wall": time.perf_counter() - wall}
            self.placement.destination.write(CPU_FILE, json.dumps(spent).encode())
        return marker


def stage_times(folder: Path, count: int) -> dict[str, float]:
    """Milliseconds per image of each stage of an actor's CPU work, one thread, over the first `count` photos."""
    config = DiffSegConfig()
    files = sorted(folder.glob("*.jpg"))[:count]
    data = [path.read_bytes() for path in files]
    prepared = [prepare(item, config) for item in data]  # warm-up, and the mask sizes
    segmenter = ZeroCostSegmenter()
    maps = [segmenter.labels(image.mask_size) for image in prepared]
    rows = [Row(path.name, str(path), SIZE[0], SIZE[1], label_png(labels), 1, []) for path, labels in zip(files, maps)]
    return {"prepare (decode with draft, resize, scale)": _ms(lambda: [prepare(item, config) for item in data], count),
            "regions (segment statistics)": _ms(lambda: [regions(labels) for labels in maps], count),
            "PNG encoding": _ms(lambda: [label_png(labels) for labels in maps], count),
            "Parquet encoding": _ms(lambda: encode_shard(rows, {"run_id": "bench"}), count)}


def _ms(work: Callable[[], object], count: int, repeat: int = 3) -> float:
    """Best of `repeat` runs of `work`, in milliseconds per image."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return 1000 * best / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--cpus-per-actor", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--stage-images", type=int, default=20, help="photos timed per stage in this process")
    add_address(parser)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        inputs, output = Path(folder) / "in", Path(folder) / "out"
        inputs.mkdir()
        sizes = write_photos(inputs, args.images)
        start_ray(args.address, args.cpus_per_actor, object_store_mib=100)
        started = time.perf_counter()
        planned = plan(LabelJob(input=str(inputs), output=str(output), model="zero-cost", shard_size=args.shard_size,
                                num_actors=1, gpus_per_actor=0, cpus_per_actor=args.cpus_per_actor,
                                memory_per_actor=0))  # no model to hold
        planning = time.perf_counter() - started
        summary = execute(planned, progress=False, worker=BenchWorker)
        ray.shutdown()
        spent = json.loads((output / CPU_FILE).read_text())
        stages = stage_times(inputs, min(args.stage_images, args.images))
    labeling = summary.seconds - planning - summary.startup_seconds
    images = summary.images_ok + summary.images_failed
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, ray {ray.__version__}, "
          f"1 actor of {args.cpus_per_actor} CPU(s)")
    print(f"{args.images} JPEGs of {SIZE[0]}x{SIZE[1]}, {min(sizes) // 1024}-{max(sizes) // 1024} KB "
          f"(mean {np.mean(sizes) / 1024:.0f} KB), shards of {args.shard_size}")
    print(f"labeled {summary.images_ok} ok, {summary.images_failed} failed in {labeling:.2f} s after the actor "
          f"started: {images / labeling:.1f} images/s")
    print(f"CPU per image: actor process {1000 * spent['cpu'] / spent['images']:.1f} ms, whole machine "
          f"{1000 * spent['machine'] / spent['images']:.1f} ms (anything else running included; over the actor's "
          f"{spent['wall']:.2f} s of labeling)")
    print("stages, one thread, ms per image:")
    for stage, ms in stages.items():
        print(f"  {stage:45s} {ms:6.2f}")
    print(f"  {'total':45s} {sum(stages.values()):6.2f}")
    if args.json:
        figures = {"machine": platform.processor() or platform.machine(), "cpus_per_actor": args.cpus_per_actor,
                   "images": images, "images_per_s": images / labeling,
                   "actor_cpu_ms_per_image": 1000 * spent["cpu"] / spent["images"],
                   "machine_cpu_ms_per_image": 1000 * spent["machine"] / spent["images"], "stages_ms": stages}
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
