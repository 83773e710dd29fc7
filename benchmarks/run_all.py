"""Every benchmark on one machine, in one run, with all figures gathered in one JSON file.

On a GPU (sized to finish in under 8 minutes on an H100/H200-class GPU):

- `bench_core.py`: stock forward, capture and post-processing at batch 1, 4, 8 and 16, float16 and bfloat16,
  synchronized timings in ms and peak GPU memory;
- `bench_actor.py`: the CPU side of one actor (zero-cost model, 2-megapixel JPEGs) with all the machine's CPUs;
- `bench_job.py --suite full`: the labeling job against an in-process loop at 512 px, batch 8, on the GPU:
  images/s per GPU end to end;
- `bench_methods.py`: DiffCut next to DiffSeg (SD 1.5 and SSD-1B, batch 8, float16): forward, post-processing
  and images/s per method.

`--dry-run` runs the same scripts on CPU at the smallest sizes, on the built-in tiny models (a check that every
code path runs, in a minute or two; its figures mean nothing). `--address` makes the scripts that use Ray join that
cluster instead of starting one each. Each script's own output is shown as it runs; the JSON has one entry per
script.

    python benchmarks/run_all.py [--out figures.json] [--dry-run] [--address ADDRESS]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAY_SCRIPTS = ("bench_actor", "bench_job")
"""The scripts that take `--address`."""


def plan(dry_run: bool, cpus: int, address: str | None = None) -> dict[str, list[str]]:
    """The command-line arguments of each benchmark script."""
    arguments = _dry_run_arguments() if dry_run else _gpu_arguments(cpus)
    if address:
        for script in RAY_SCRIPTS:
            arguments[script] += ["--address", address]
    return arguments


def _dry_run_arguments() -> dict[str, list[str]]:
    """Every case and suite of each script, at its smallest size, on the tiny models."""
    return {"bench_core": ["--device", "cpu", "--model", "tiny", "--resolution", "128", "--dtype", "bfloat16",
                           "--batch", "1", "--repeat", "1"],
            "bench_actor": ["--images", "2", "--shard-size", "1", "--stage-images", "1", "--cpus-per-actor", "1"],
            "bench_job": ["--device", "cpu", "--suite", "full", "tiny", "--model", "tiny", "--resolution", "128",
                          "--images", "1", "--tiny-images", "1"],
            "bench_methods": ["--device", "cpu", "--tiny", "--resolution", "128", "--dtype", "bfloat16",
                              "--repeat", "1"]}


def _gpu_arguments(cpus: int) -> dict[str, list[str]]:
    """The full-size run on one GPU, the actor benchmark with all `cpus` CPUs."""
    return {"bench_core": ["--device", "cuda", "--dtype", "float16", "bfloat16", "--batch", "1", "4", "8", "16",
                           "--repeat", "5"],
            "bench_actor": ["--images", "600", "--cpus-per-actor", str(cpus)],
            "bench_job": ["--device", "cuda", "--suite", "full", "--images", "1024", "--batch", "8"],
            "bench_methods": ["--device", "cuda", "--dtype", "float16", "--batch", "8", "--repeat", "3"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmark-figures.json", help="the JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="on CPU, at the smallest sizes, tiny models")
    parser.add_argument("--address", default=None,
                        help="Ray cluster for the scripts that use Ray (default: each starts a private local one)")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    figures = {"date": datetime.date.today().isoformat(), "dry_run": args.dry_run, "cpus": cpus, "benchmarks": {}}
    with tempfile.TemporaryDirectory() as folder:
        for script, arguments in plan(args.dry_run, cpus, args.address).items():
            output = Path(folder) / f"{script}.json"
            command = [sys.executable, str(HERE / f"{script}.py"), *arguments, "--json", str(output)]
            print(f"\n$ {' '.join(command[1:])}", flush=True)
            started = time.perf_counter()
            finished = subprocess.run(command, cwd=HERE.parent)
            entry = {"arguments": arguments, "seconds": round(time.perf_counter() - started, 1),
                     "exit_code": finished.returncode}
            if output.exists():
                entry["figures"] = json.loads(output.read_text())
            figures["benchmarks"][script] = entry
            Path(args.out).write_text(json.dumps(figures, indent=2))  # after each script: a later crash keeps it
    failed = [name for name, entry in figures["benchmarks"].items() if entry["exit_code"]]
    print(f"\nfigures in {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
