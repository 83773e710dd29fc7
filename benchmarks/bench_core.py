"""Core benchmark: the cost of attention capture and post-processing next to one UNet forward.

Runs the full-size SD 1.5 UNet architecture with random weights (built from its config, no download) on
batches of 512x512 images (64x64 latents) and prints, per dtype and batch size, in milliseconds:
(a) the UNet forward with stock attention processors (PyTorch SDPA), (b) the same forward with self-attention
capture, (c) the post-processing of the batch (aggregation + merging + 512x512 label maps), (d) the same with each
segment's score and stability (what the labeling job runs), the ratios b/a, c/a and d/c, images/s of b + c (the
model's side of labeling, without the VAE encoder), and the peak memory of each step (GPU memory on a GPU, the
process's RSS on CPU).

Stock and captured forwards alternate, and each figure is the minimum over `--repeat` runs after a warm-up:
on a shared machine the minimum is the least disturbed run (the median is printed too). GPU timings are
synchronized.

    python benchmarks/bench_core.py [--device cpu|cuda] [--dtype float32 bfloat16] [--batch 1 4 8]
                                    [--repeat 3] [--model sd15-random|tiny] [--resolution 512] [--json FILE]

Smoke run (the same code path in seconds, figures meaningless): `--model tiny --batch 1 --repeat 1`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from diffseg import DiffSegConfig, builtin, segment_from_attention
from diffseg.attention import SelfAttentionCapture
from diffseg.model import DTYPES
from diffseg.segment import segment_images_scored


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset on a GPU; else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def timed(steps: dict[str, Callable[[], object]], repeat: int, device: torch.device) -> dict[str, list[float]]:
    """Milliseconds of each step over `repeat` rounds (the steps alternate within a round), after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeat + 1):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def build(dtype: torch.dtype, device: torch.device, model: str = "sd15-random"
          ) -> tuple[torch.nn.Module, dict, dict, SelfAttentionCapture]:
    """The built-in `model`'s UNet (SD 1.x layout) on `device`, its stock and its capturing attention processors,
    and the capture."""
    unet = builtin.build(model).unet.to(device=device, dtype=dtype)
    unet.set_attn_processor(AttnProcessor2_0())
    stock = dict(unet.attn_processors)
    capture = SelfAttentionCapture(unet)
    return unet, stock, dict(unet.attn_processors), capture


def bench(built: tuple, batch: int, repeat: int, device: torch.device, resolution: int = 512) -> dict[str, float]:
    """Figures for one batch size on a `build` result at `resolution` px (see the module docstring)."""
    unet, stock, captured, capture = built
    dtype = unet.dtype
    generator = torch.Generator().manual_seed(0)
    side = resolution // 8  # the latent's
    latents = torch.randn(batch, unet.config.in_channels, side, side, generator=generator).to(device=device,
                                                                                           dtype=dtype)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator).to(device=device,
                                                                                           dtype=dtype)
    timestep = torch.full((batch,), 300, device=device)

    @torch.inference_mode()
    def forward(processors: dict) -> None:
        unet.set_attn_processor(dict(processors))
        capture.reset()
        unet(latents, timestep, encoder_hidden_states=context)

    reset_peak(device)
    forward(stock)
    synchronize(device)
    peak_stock = peak_gib(device)
    reset_peak(device)
    forward(captured)
    synchronize(device)
    peak_capture = peak_gib(device)
    times = timed({"stock": lambda: forward(stock), "capture": lambda: forward(captured)}, repeat, device)

    forward(captured)
    maps = capture.maps((side, side))
    config = DiffSegConfig()
    reset_peak(device)
    images = [list(image) for image in zip(*maps)]
    sizes = [(resolution, resolution)] * batch
    times.update(timed({"post": lambda: segment_from_attention(maps, config).cpu(),
                        "post_scored": lambda: [r.cpu() for r in segment_images_scored(images, config, sizes)]},
                       repeat, device))
    peak_post = peak_gib(device)
    result = {"dtype": str(dtype).removeprefix("torch."), "batch": batch, "resolution": resolution,
              "device": str(device)}
    for name, values in times.items():
        result[f"{name}_ms"] = min(values)
        result[f"{name}_median_ms"] = statistics.median(values)
    result.update(capture_ratio=result["capture_ms"] / result["stock_ms"],
                  post_ratio=result["post_ms"] / result["stock_ms"],
                  scored_ratio=result["post_scored_ms"] / result["post_ms"],
                  images_per_s=1000 * batch / (result["capture_ms"] + result["post_ms"]),
                  peak_stock_gib=peak_stock, peak_capture_gib=peak_capture, peak_post_gib=peak_post)
    return result


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None,
                        help="default: float16 bfloat16 on a GPU, float32 bfloat16 on CPU")
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="default: 1 4 8 16 on a GPU, 1 on CPU")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", choices=["sd15-random", "tiny"], default="sd15-random",
                        help="built-in UNet; tiny: a smoke run of the same code in seconds")
    parser.add_argument("--resolution", type=int, default=512, help="image side in px (a multiple of 64)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtypes = args.dtype or (["float16", "bfloat16"] if gpu else ["float32", "bfloat16"])
    sizes = args.batch or ([1, 4, 8, 16] if gpu else [1])
    print(f"machine: {describe(device)}, torch {torch.__version__}, device {device}", flush=True)
    results = []
    for name in dtypes:
        built = build(DTYPES[name], device, args.model)
        for batch in sizes:
            r = bench(built, batch, args.repeat, device, args.resolution)
            results.append(r)
            memory = "GPU memory" if gpu else "RSS"
            print(f"{name} batch {batch}: (a) stock forward {r['stock_ms']:.1f} ms | (b) with capture "
                  f"{r['capture_ms']:.1f} ms (b/a {r['capture_ratio']:.2f}) | (c) post-processing "
                  f"{r['post_ms']:.1f} ms (c/a {r['post_ratio']:.3f}) | (d) with segment scores "
                  f"{r['post_scored_ms']:.1f} ms (d/c {r['scored_ratio']:.2f}) | "
                  f"{r['images_per_s']:.1f} img/s (b + c) | peak {memory} "
                  f"GiB a/b/c {r['peak_stock_gib']:.2f}/{r['peak_capture_gib']:.2f}/{r['peak_post_gib']:.2f} | "
                  f"medians a/b/c {r['stock_median_ms']:.1f}/{r['capture_median_ms']:.1f}/{r['post_median_ms']:.1f} ms",
                  flush=True)
            if gpu:
                torch.cuda.empty_cache()
        del built
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"machine": describe(device), "torch": torch.__version__, "model": args.model,
                       "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
