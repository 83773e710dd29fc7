"""Evaluation benchmark: the cost of scoring, of each method's post-processing, and of the scoring loop.

Prints:
(1) `diffseg.metrics.Evaluation.add` per 512x512 image (27 classes with ignored pixels, 5-40 segments), for
    both protocols: scoring thousands of images must take seconds, not minutes;
(2) post-processing of one image's 64x64-grid attention (the 512 px setting) with DiffSeg, K-Means-C (K=6)
    and K-Means-S (K = the 8 planted regions), median of repeated runs;
(3) `pipeline.evaluation.scoring.score_model` with the `tiny` model on a generated COCO-Stuff-27 folder, against a
    plain in-process loop doing the same reading, segmenting and scoring one image after the other.

    python benchmarks/bench_eval.py [--images 200] [--repeat 3] [--json FILE]

Smoke run: `--images 2 --repeat 1`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffseg import DiffSeg, DiffSegConfig, segment_from_attention  # noqa: E402
from diffseg.metrics import Evaluation  # noqa: E402
from diffseg.preprocess import prepare_label  # noqa: E402
from pipeline.evaluation.datasets import open_dataset  # noqa: E402
from pipeline.evaluation.scoring import score_model, variants  # noqa: E402
from synthetic.attention import planted_attention, random_partition  # noqa: E402
from synthetic.datasets import coco_stuff  # noqa: E402


def blocks(rng: np.random.Generator, values: int, cells: int, side: int = 512) -> np.ndarray:
    """A `side x side` map of `cells x cells` blocks, each a random value in 0..values-1."""
    return np.kron(rng.integers(0, values, (cells, cells)), np.ones((side // cells, side // cells), dtype=np.int64))


def bench_metrics(images: int) -> dict[str, float]:
    """(1): milliseconds per image of each protocol."""
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(images):
        label = blocks(rng, 28, 16) - 1  # -1 is ignored
        pairs.append((blocks(rng, int(rng.integers(5, 41)), 32), label))
    figures = {}
    for protocol in ("per-image", "dataset"):
        evaluation = Evaluation(27, protocol=protocol)
        start = time.perf_counter()
        for prediction, label in pairs:
            evaluation.add(prediction, label)
        evaluation.result()
        per_image = (time.perf_counter() - start) / images
        print(f"(1) metrics, {protocol:9}: {1000 * per_image:.2f} ms per 512x512 image "
              f"({images} images; 2,175 images would take {2175 * per_image:.1f} s)")
        figures[protocol] = 1000 * per_image
    return figures


def bench_methods(repeat: int) -> dict[str, float]:
    """(2): median seconds per image of each method's post-processing."""
    partition = random_partition(64, 64, 8, seed=0)
    maps = planted_attention(partition, noise=0.3)
    figures = {}
    for name, config in (("diffseg", DiffSegConfig()), ("kmeans-c K=6", DiffSegConfig(method="kmeans-c")),
                         ("kmeans-s K=8", DiffSegConfig(method="kmeans-c", num_clusters=8))):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            segment_from_attention(maps, config, (512, 512))
            times.append(time.perf_counter() - start)
        print(f"(2) post-processing, {name:13}: {statistics.median(times):.3f} s per image (64x64 grid)")
        figures[name] = statistics.median(times)
    return figures


def bench_loop(images: int) -> dict[str, float]:
    """(3): milliseconds per image of the plain loop and of `score_model`."""
    torch.set_num_threads(1)
    config = DiffSegConfig(resolution=128, crop="center")
    segmenter = DiffSeg.from_pretrained("tiny", config=config, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        coco_stuff(Path(folder), sizes=tuple((96 + 8 * (i % 5), 64 + 8 * (i % 3)) for i in range(images)))
        dataset = open_dataset("coco-stuff-27", folder)
        scored = variants("diffseg", config)
        score_model(segmenter, dataset, scored, limit=5, progress=False)  # warm-up
        start = time.perf_counter()
        evaluation = Evaluation(27)
        for example in dataset.examples:
            image = segmenter.prepare(dataset.read_image(example))
            label = prepare_label(dataset.read_label(example), image)
            evaluation.add(segmenter.segment_prepared([image])[0], label)
        loop = time.perf_counter() - start
        start = time.perf_counter()
        report = score_model(segmenter, dataset, scored, samples=0, progress=False)
        scored_seconds = time.perf_counter() - start
    assert report.results[scored[0].name]["tp"] == evaluation.result()["tp"]
    print(f"(3) tiny model, {images} images at 128 px, 1 torch thread: plain loop {1000 * loop / images:.1f} ms/img, "
          f"score_model {1000 * scored_seconds / images:.1f} ms/img ({loop / scored_seconds:.2f}x)")
    return {"loop": 1000 * loop / images, "score_model": 1000 * scored_seconds / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    figures = {"images": args.images, "metrics_ms_per_image": bench_metrics(args.images),
               "post_processing_s_per_image": bench_methods(args.repeat),
               "scoring_ms_per_image": bench_loop(args.images)}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
