"""Methods benchmark: images/s of DiffCut next to DiffSeg on the full-size architectures, random weights.

Each case is a model and a method at its paper's setting: DiffSeg on SD 1.5 at 512 px; DiffCut on SD 1.5 and on
SSD-1B (the DiffCut paper's best model) at 1024 px; DiffSeg on SSD-1B at 1024 px (its native size). Per case, on
synthetic photos center-cropped as the papers do, in milliseconds per batch: (a) the forward (VAE encoder and
UNet: DiffSeg's whole UNet with the attention capture, DiffCut's UNet up to its feature layer), (b) the
post-processing with segment scores (what the labeling job runs), then images/s of a + b and the peak memory
(GPU memory on a GPU, the process's RSS on CPU). Each figure is the minimum over `--repeat` runs after a warm-up.

Random weights give DiffCut features without structure, which its cut splits into about one segment per token
(1,000+ cuts, each an eigendecomposition; 34 s per image on a 2-core CPU): a worst case, not what real weights
give. So DiffCut's (b) post-processes planted features of the same shape instead, with `PLANTED_SEGMENTS`
segments (the order of what the paper's images give).

    python benchmarks/bench_methods.py [--device cpu|cuda] [--dtype float32] [--batch 1]
                                       [--cases sd15-diffseg sd15-diffcut ssd1b-diffcut ssd1b-diffseg]
                                       [--repeat 2] [--tiny] [--resolution PX] [--json FILE]

`--tiny` runs every case on the built-in tiny model of the same layout instead (`tiny` for SD 1.5, `tiny-xl` for
SSD-1B): with `--resolution 128`, a smoke run of every case in seconds, whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.bench_core import peak_gib, reset_peak, timed  # noqa: E402
from diffseg import DiffSeg, DiffSegConfig  # noqa: E402
from diffseg.methods import METHODS  # noqa: E402
from diffseg.model import DTYPES  # noqa: E402
from synthetic.photos import photo  # noqa: E402

CASES = {
    "sd15-diffseg": ("sd15-random", DiffSegConfig(crop="center")),
    "sd15-diffcut": ("sd15-random", DiffSegConfig(method="diffcut", crop="center")),
    "ssd1b-diffcut": ("ssd1b-random", DiffSegConfig(method="diffcut", crop="center")),
    "ssd1b-diffseg": ("ssd1b-random", DiffSegConfig(crop="center", resolution=1024)),
}
"""Model and settings of each case."""
PLANTED_SEGMENTS = 12
TINY_MODELS = {"sd15-random": "tiny", "ssd1b-random": "tiny-xl"}
"""`--tiny`: the built-in tiny model with each full-size model's layout."""


def planted_features(like: torch.Tensor, segments: int = PLANTED_SEGMENTS) -> torch.Tensor:
    """Features of `like`'s shape `(h, w, C)` and device: `segments` vertical bands, each with its own random
    direction, plus noise of half a direction's norm."""
    h, w, channels = like.shape
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(segments, channels, generator=generator), dim=1)
    bands = (torch.arange(w) * segments // w).expand(h, w)
    noise = 0.5 * torch.randn(h, w, channels, generator=generator) / channels**0.5
    return (directions[bands] + noise).to(like.device, like.dtype)


def run_case(name: str, device: torch.device, dtype: torch.dtype, batch: int, repeat: int, tiny: bool = False,
             resolution: int | None = None) -> dict:
    """The case's timings and memory (see the module's docstring); `tiny`: on the tiny model of its layout;
    `resolution`: at that processing size (px) instead of the case's."""
    model, config = CASES[name]
    model = TINY_MODELS[model] if tiny else model
    config = replace(config, resolution=resolution) if resolution else config
    segmenter = DiffSeg.from_pretrained(model, config=config, device=device, dtype=dtype)
    images = [segmenter.prepare(photo(1200, 900, seed=seed)) for seed in range(batch)]
    reset_peak(device)
    forwards = segmenter.forward_batch(images, batch)
    if METHODS[config.method].capture == "features":  # each forward's evidence is its features (h, w, C)
        forwards = [forward._replace(evidence=planted_features(forward.evidence)) for forward in forwards]
    times = timed({"forward": lambda: segmenter.forward_batch(images, batch),
                   "post": lambda: segmenter.label_batch_scored(images, forwards)}, repeat, device)
    forward_ms, post_ms = min(times["forward"]), min(times["post"])
    segments = [int(result.labels.max()) + 1 for result in segmenter.label_batch_scored(images, forwards)]
    return {"case": name, "model": model, "method": config.method, "resolution": config.resolution,
            "batch": batch, "forward_ms": forward_ms, "post_ms": post_ms,
            "images_per_s": 1000 * batch / (forward_ms + post_ms), "peak_gib": peak_gib(device),
            "segments": segments}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the tiny built-in models (for a smoke run)")
    parser.add_argument("--resolution", type=int, default=None, help="processing size in px; default: the case's")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}, {args.dtype}", flush=True)
    results = []
    for name in args.cases:
        result = run_case(name, device, DTYPES[args.dtype], args.batch, args.repeat, args.tiny, args.resolution)
        results.append(result)
        print(f"{name}: {result['resolution']} px, batch {args.batch}: (a) forward {result['forward_ms']:.0f} ms | "
              f"(b) post-processing with scores {result['post_ms']:.0f} ms | {result['images_per_s']:.3f} images/s | "
              f"peak {result['peak_gib']:.2f} GiB | segments {result['segments']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"dtype": args.dtype, "device": str(device), "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
