"""Core benchmark: the cost of attention capture and post-processing next to one UNet forward.

Runs the full-size SD 1.5 UNet architecture with random weights (built from its config, no download) on
one 512x512 image and prints, per dtype: (a) the UNet forward with stock attention processors, (b) the
same forward with self-attention capture, (c) the post-processing (aggregation + merging + label map),
the ratios b/a and c/a, and the process's peak resident memory after each step.

    python benchmarks/bench_core.py [--dtype float32 bfloat16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from diffseg import DiffSegConfig, builtin, segment_from_attention
from diffseg.attention import SelfAttentionCapture
from diffseg.model import DTYPES


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(step, repeat: int) -> float:
    """Median seconds of `step()` over `repeat` runs, after one warm-up run."""
    step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(dtype: torch.dtype, repeat: int, device: str) -> dict[str, float]:
    unet = builtin.build("sd15-random").unet.to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 64, 64, generator=generator).to(device=device, dtype=dtype)
    context = torch.randn(1, 77, 768, generator=generator).to(device=device, dtype=dtype)
    timestep = torch.full((1,), 300, device=device)

    def forward():
        with torch.inference_mode():
            unet(latents, timestep, encoder_hidden_states=context)
        if device == "cuda":
            torch.cuda.synchronize()

    unet.set_attn_processor(AttnProcessor2_0())
    stock = timed(forward, repeat)
    peak_stock = peak_gib()

    capture = SelfAttentionCapture(unet)

    def captured_forward():
        capture.reset()
        forward()

    captured = timed(captured_forward, repeat)
    peak_capture = peak_gib()
    maps = capture.maps((64, 64))
    config = DiffSegConfig()
    post = timed(lambda: segment_from_attention(maps, config), repeat)
    return {"stock_s": stock, "capture_s": captured, "post_s": post, "peak_stock_gib": peak_stock,
            "peak_capture_gib": peak_capture, "peak_post_gib": peak_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {args.device}")
    for name in args.dtype:
        r = bench(DTYPES[name], args.repeat, args.device)
        print(f"{name}: (a) stock forward {r['stock_s']:.2f} s | (b) with capture {r['capture_s']:.2f} s "
              f"(b/a {r['capture_s'] / r['stock_s']:.2f}) | (c) post-processing {r['post_s']:.3f} s "
              f"(c/a {r['post_s'] / r['stock_s']:.3f}) | peak RSS GiB after a/b/c: {r['peak_stock_gib']:.2f}/"
              f"{r['peak_capture_gib']:.2f}/{r['peak_post_gib']:.2f}", flush=True)


if __name__ == "__main__":
    main()
