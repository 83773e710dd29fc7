"""Offline GPU check: the GPU figures of our targets in one command, on an air-gapped GPU host, without Ray.

The host: one CUDA GPU, 16 CPUs, Python 3.12 with a CUDA build of PyTorch, transformers, numpy,
scipy, scikit-learn, pyarrow, fsspec, pillow and pytest; no network, and no diffusers, Ray, s3fs or faiss. What it
lacks travels with the checkout as wheels in `gpu-wheels/` (made where there is a network by
`benchmarks/gpu_bundle.sh`). This script installs them into a temporary folder (pip, no index, nothing resolved)
and runs each step as its own process, with that folder and the checkout on PYTHONPATH, under the step's own time
limit and the run's (`--budget`):

- environment: versions, CPUs, GPU name, memory and clocks;
- gpu-tests: `pytest -m gpu` on the test files that hold GPU tests (those skipped without CUDA);
- masks: label maps of the tiny models (`tiny`, `tiny-xl`; DiffSeg and DiffCut) made on the GPU in fp32 (TF32 off)
  against the CPU's. Per image, the agreement: the fraction of pixels whose labels agree once the two maps' labels
  are matched one to one (Hungarian, as the evaluation's per-image protocol; label ids are arbitrary per image),
  and whether the maps are identical;
- worker: the labeling actor in-process (`bench_worker.py`: `LabelWorker` on local shards of 2-megapixel JPEGs,
  sd15-random at 512 px, fp16, batch 8, 8 CPU threads): images/s after load, GPU busy fraction, peak GPU memory;
- core: the forward with capture against the stock forward, post-processing per batch, images/s and peak GPU
  memory (`bench_core.py`: SD 1.5 at 512 px, fp16 and bf16, batch 1, 8 and 16);
- methods: DiffCut on SSD-1B at 1024 px (post-processing on planted features) and DiffSeg on SSD-1B at 1024 px,
  images/s and peak GPU memory (`bench_methods.py`, fp16, batch 8);
- ncut: DiffCut's post-processing and `eigh` on the CPU against the GPU by matrix size (`bench_ncut.py`).

Every model has random weights built from its published config (no download). Each step's figures go into `--out`
as soon as the step writes them, with the last lines of its output when it ends, so a run cut off keeps what it
measured; a table of the targets ends the run. Exit status 1 when a step failed or ran out of time. Sized for under
8 minutes on an H100 (building the full-size models on the CPU takes tens of seconds each).

`--dry-run` runs every step on CPU with the tiny models at the smallest sizes, one torch thread (a check that the
whole run works, part of the test suite; its figures mean nothing and no target is judged). It installs the wheels
too when `--wheels` holds some, and otherwise uses the environment as it is.

    python benchmarks/gpu_check.py [--out gpu-figures.json] [--wheels gpu-wheels] [--steps worker core ...]
                                   [--budget 560] [--dry-run]
    python benchmarks/gpu_check.py --wheel-list    # the wheels gpu_bundle.sh downloads
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
HOST_PACKAGES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "pyarrow", "fsspec", "pillow", "pytest")
"""What the offline host has installed, with whatever they depend on."""
CHECK_NEEDS = ("diffusers",)
"""What the check's code path imports that the host lacks; with its dependencies, the bundle's wheels."""
TARGET_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython"}
"""Environment markers of the host, to read the packages' conditional requirements as it would."""
BUDGET_S = 560
"""Default seconds for the whole run: every step stops by then, so one 10-minute command ends with its table."""
MIN_STEP_S = 10
"""A step with less time than this left is not started."""
POLL_S = 2
"""Seconds between two looks at a running step's figures file."""
STOP_GRACE_S = 10
"""Seconds a step has to exit after SIGTERM before SIGKILL."""
INSTALL_TIMEOUT_S = 180
TAIL_LINES = 40
"""Lines of each step's output kept in the figures file."""
GPU_TEST_MARK = re.compile(r"mark\.gpu\b")


@dataclass(frozen=True)
class Step:
    """One process of the check."""

    name: str
    command: list[str]
    """Without `--json FILE`, which every step takes."""
    limit_s: float


def plan(dry_run: bool) -> list[Step]:
    """The steps in order, cheapest and most telling first: if the run is cut off, the later ones are lost."""
    python, me = sys.executable, str(Path(__file__).resolve())
    internal = [python, me, *(["--dry-run"] if dry_run else []), "--step"]
    if dry_run:
        worker = ["--model", "tiny", "--device", "cpu", "--resolution", "128", "--size", "320x240", "--batch", "2",
                  "--threads", "1", "--photos", "4", "--images", "8", "--shard-size", "4", "--warmup", "2"]
        core = ["--device", "cpu", "--model", "tiny", "--resolution", "128", "--dtype", "float32", "--batch", "1",
                "--repeat", "1"]
        methods = ["--device", "cpu", "--tiny", "--resolution", "128", "--dtype", "float32", "--batch", "1",
                   "--repeat", "1"]
        ncut = ["--device", "cpu", "--grids", "8", "--sizes", "64", "--repeat", "1"]
    else:
        worker = ["--model", "sd15-random", "--device", "cuda", "--dtype", "float16", "--resolution", "512",
                  "--batch", "8", "--threads", "8", "--photos", "256", "--images", "2048", "--shard-size", "128"]
        core = ["--device", "cuda", "--dtype", "float16", "bfloat16", "--batch", "1", "8", "16", "--repeat", "3"]
        methods = ["--device", "cuda", "--dtype", "float16", "--batch", "8", "--repeat", "3"]
        ncut = ["--device", "cuda", "--grids", "32", "--sizes", "128", "256", "512", "1024", "2048", "--repeat", "2"]
    return [Step("environment", [*internal, "environment"], 60),
            Step("gpu-tests", [*internal, "gpu-tests"], 120),
            Step("masks", [*internal, "masks"], 90),
            Step("worker", [python, str(HERE / "bench_worker.py"), *worker], 150),
            Step("core", [python, str(HERE / "bench_core.py"), *core], 150),
            Step("methods", [python, str(HERE / "bench_methods.py"), "--cases", "ssd1b-diffcut", "ssd1b-diffseg",
                             *methods], 180),
            Step("ncut", [python, str(HERE / "bench_ncut.py"), *ncut], 90)]


# The run: install, steps, figures, table.


class Figures:
    """The figures file: rewritten whole (atomically) whenever something in it changes."""

    def __init__(self, path: Path, dry_run: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                                     "dry_run": dry_run, "checkout": str(ROOT), "steps": {}}
        self.save()

    def save(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2))
        os.replace(partial, self.path)


def install(wheels: Path, target: Path) -> dict[str, Any]:
    """Install every wheel in `wheels` into `target` (pip, no index, no dependency resolution: the folder holds
    exactly what the host lacks); when there are none, use the environment as it is if it has `CHECK_NEEDS`.
    Returns what was done; raises `RuntimeError` when neither works."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        missing = [name for name in CHECK_NEEDS if importlib.util.find_spec(name) is None]
        if missing:
            raise RuntimeError(f"no wheels in {wheels} and {', '.join(missing)} not installed: make the bundle with "
                               "benchmarks/gpu_bundle.sh and copy it with the checkout")
        return {"wheels": [], "note": f"no wheels in {wheels}: the environment's packages"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                           "--disable-pip-version-check", "--quiet", "--target", str(target), *map(str, files)],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode:
        raise RuntimeError(f"pip install of {wheels} failed: {done.stderr.strip()[-2000:]}")
    return {"wheels": [file.name for file in files], "target": str(target),
            "seconds": round(time.perf_counter() - started, 1)}


def step_environment(packages: Path | None, dry_run: bool) -> dict[str, str]:
    """The environment of every step: the installed wheels and the checkout first on the import path, no Hub."""
    path = [str(packages)] if packages else []
    path += [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if dry_run:  # the tiny models' many small kernels: one thread, or OpenMP's spinning is what is measured
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_step(step: Step, folder: Path, env: dict[str, str], deadline: float, figures: Figures) -> dict[str, Any]:
    """Run `step` until it ends, its limit or the run's `deadline` (monotonic); its entry in `figures`, updated
    while it runs (its `--json` file, as soon as the step writes it) and when it ends."""
    output = folder / f"{step.name}.json"
    command = [*step.command, "--json", str(output)]
    limit = min(step.limit_s, deadline - time.monotonic())
    entry: dict[str, Any] = {"command": " ".join(command[1:]), "limit_s": round(limit)}
    figures.data["steps"][step.name] = entry
    if limit < MIN_STEP_S:
        entry["status"] = "not run: out of time"
        figures.save()
        return entry
    print(f"\n== {step.name} (at most {limit:.0f} s)\n$ {entry['command']}", flush=True)
    entry["status"] = "running"
    figures.save()
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_pump, args=(process.stdout, tail), daemon=True)
    reader.start()
    seen: int | None = None
    while True:
        try:
            code: int | None = process.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            seen = _merge(output, entry, seen, figures)
            if time.monotonic() - started > limit:
                _stop(process)
                code = None
                break
    reader.join(timeout=STOP_GRACE_S)
    _merge(output, entry, seen, figures)
    entry.update(seconds=round(time.monotonic() - started, 1), exit_code=code, tail=list(tail),
                 status="ok" if code == 0 else f"timed out after {limit:.0f} s" if code is None else "failed")
    figures.save()
    return entry


def _pump(stream: IO[str], tail: deque[str]) -> None:
    """Echo a step's output as it comes, keeping its last lines."""
    for line in stream:
        print(line, end="", flush=True)
        tail.append(line.rstrip("\n"))


def _merge(output: Path, entry: dict[str, Any], seen: int | None, figures: Figures) -> int | None:
    """Take the step's figures file into `entry` if it changed since `seen` (its mtime in ns); the new mtime. A file
    caught half-written is read again next time."""
    try:
        mtime = output.stat().st_mtime_ns
        if mtime != seen:
            entry["figures"] = json.loads(output.read_text())
            figures.save()
        return mtime
    except (OSError, ValueError):
        return seen


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the step's process group, SIGKILL it if it is still there after `STOP_GRACE_S`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


# Targets and the final table.


@dataclass(frozen=True)
class Target:
    """One line of the final table: a figure, and the bound it must meet (None: printed only)."""

    what: str
    step: str
    value: Callable[[dict[str, Any]], float | None]
    """The figure, from the step's figures (None when absent)."""
    unit: str
    bound: tuple[str, float] | None = None
    """(">=" or "<=", limit)."""
    goal: str = ""


def _result(key: str, **match: Any) -> Callable[[dict[str, Any]], float | None]:
    """`key` of the first of the figures' `results` whose fields equal `match`."""
    def value(figures: dict[str, Any]) -> float | None:
        found = [r for r in figures.get("results", []) if all(r.get(k) == v for k, v in match.items())]
        return found[0].get(key) if found else None
    return value


def _key(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda figures: figures.get(key)


def _masks_min(figures: dict[str, Any]) -> float | None:
    means = [case["mean_agreement"] for case in figures.get("cases", [])]
    return min(means) if means else None


TARGETS = (
    Target("labeling actor in-process, SD 1.5, 512 px, fp16, batch 8", "worker", _key("images_per_s"), "images/s",
           (">=", 100), "goal 150"),
    Target("  GPU busy while labeling", "worker", _key("gpu_busy"), "", (">=", 0.9)),
    Target("  peak GPU memory", "worker", _key("peak_gib"), "GiB"),
    Target("capture / stock forward, fp16, batch 8", "core", _result("capture_ratio", dtype="float16", batch=8), "x",
           ("<=", 1.3)),
    Target("capture / stock forward, bf16, batch 8", "core", _result("capture_ratio", dtype="bfloat16", batch=8), "x",
           ("<=", 1.3)),
    Target("  post-processing per image, fp16, batch 8", "core",
           lambda f: _per_image(_result("post_ms", dtype="float16", batch=8)(f), 8), "ms"),
    Target("  peak GPU memory with capture, fp16, batch 8", "core",
           _result("peak_capture_gib", dtype="float16", batch=8), "GiB"),
    Target("  peak GPU memory with capture, bf16, batch 8", "core",
           _result("peak_capture_gib", dtype="bfloat16", batch=8), "GiB"),
    Target("DiffCut, SSD-1B, 1024 px, fp16, batch 8", "methods", _result("images_per_s", case="ssd1b-diffcut"),
           "images/s", (">=", 20)),
    Target("  peak GPU memory", "methods", _result("peak_gib", case="ssd1b-diffcut"), "GiB"),
    Target("DiffSeg, SSD-1B, 1024 px, fp16, batch 8", "methods", _result("images_per_s", case="ssd1b-diffseg"),
           "images/s"),
    Target("  peak GPU memory", "methods", _result("peak_gib", case="ssd1b-diffseg"), "GiB"),
    Target("GPU masks against CPU masks, tiny models (worst case's mean)", "masks", _masks_min, ""),
)


def _per_image(ms: float | None, batch: int) -> float | None:
    return None if ms is None else ms / batch


def _device(figures: dict[str, Any]) -> str:
    """The device a step's figures were measured on."""
    return str(figures.get("device") or next((r.get("device") for r in figures.get("results", [])), "") or "")


def table(data: dict[str, Any]) -> list[str]:
    """The final table: each step's outcome, then each target with its figure and mark. A bound is judged only on
    figures a real (not dry) run measured on a GPU."""
    lines = ["dry run: tiny models on CPU, figures meaningless, no target judged"] if data["dry_run"] else []
    lines.append(f"{'step':12} {'status':28} {'seconds':>8}")
    for name, entry in data["steps"].items():
        lines.append(f"{name:12} {entry['status']:28} {entry.get('seconds', ''):>8}")
    lines += ["", f"{'figure':62} {'value':>12} {'target':>10}  mark"]
    for target in TARGETS:
        figures = data["steps"].get(target.step, {}).get("figures", {})
        value = target.value(figures)
        bound = f"{target.bound[0]} {target.bound[1]:g}" if target.bound else ""
        shown = "-" if value is None else f"{value:.3g} {target.unit}".strip()
        mark = _mark(target, value, figures, data["dry_run"]) + (f" ({target.goal})" if target.goal else "")
        lines.append(f"{target.what:62} {shown:>12} {bound:>10}  {mark}".rstrip())
    return lines


def _mark(target: Target, value: float | None, figures: dict[str, Any], dry_run: bool) -> str:
    if value is None:
        return "not measured"
    if target.bound is None:
        return ""
    if dry_run or not _device(figures).startswith("cuda"):
        return "n/a: not a GPU run"
    op, limit = target.bound
    return "PASS" if (value >= limit if op == ">=" else value <= limit) else "FAIL"


def check(args: argparse.Namespace) -> int:
    """The whole run (see the module docstring); the exit status."""
    deadline = time.monotonic() + args.budget
    figures = Figures(Path(args.out).resolve(), args.dry_run)
    steps = [step for step in plan(args.dry_run) if not args.steps or step.name in args.steps]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        packages = Path(folder) / "packages"
        try:
            figures.data["install"] = install(Path(args.wheels), packages)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            figures.data["install"] = {"error": str(error)}
            figures.save()
            print(f"cannot install the wheels: {error}", file=sys.stderr)
            return 1
        figures.save()
        env = step_environment(packages if figures.data["install"]["wheels"] else None, args.dry_run)
        for step in steps:
            run_step(step, Path(folder), env, deadline, figures)
    figures.data["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    figures.save()
    print("\n" + "\n".join(table(figures.data)) + f"\n\nfigures in {figures.path}", flush=True)
    return 0 if all(entry["status"] == "ok" for entry in figures.data["steps"].values()) else 1


# The bundle's wheel list (run where the packages are installed, by gpu_bundle.sh).


def wheel_list() -> list[str]:
    """`name==version` of every distribution `CHECK_NEEDS` requires, transitively, that the host's packages do not
    (as read from this environment's installed metadata, the host's markers applied), pinned to this environment's
    versions: the checkout was tested with them."""
    have = _closure(HOST_PACKAGES, strict=False)
    return sorted(f"{name}=={importlib.metadata.version(name)}" for name in _closure(CHECK_NEEDS) - have)


def _closure(names: Iterable[str], strict: bool = True) -> set[str]:
    """The distributions `names` are, with everything they require (no extras), canonical names. Not `strict`: a
    distribution not installed here counts without its requirements (a host package this environment lacks)."""
    from packaging.requirements import Requirement  # here only: installed with pip where the bundle is made
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    todo = [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            if strict:
                raise
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({**TARGET_MARKERS, "extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return found


# Internal steps, each in its own process (`--step NAME --json FILE`).


def environment_figures(json_path: Path) -> None:
    """Versions, CPUs, and the GPU's name, memory and clocks."""
    import torch

    versions = {}
    for name in ("torch", "diffusers", "transformers", "huggingface-hub", "numpy", "scipy", "pyarrow", "fsspec",
                 "pillow", "pytest"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    figures: dict[str, Any] = {"python": sys.version.split()[0], "versions": versions, "cuda": torch.version.cuda,
                               "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(), "device": "cpu", "gpu": None}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        figures.update(device="cuda", gpu={"name": properties.name, "memory_gib": properties.total_memory / 2**30,
                                           "capability": f"{properties.major}.{properties.minor}",
                                           "multiprocessors": properties.multi_processor_count,
                                           "nvidia_smi": _nvidia_smi()})
    json_path.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def _nvidia_smi() -> list[dict[str, str]] | str:
    """Per GPU of the machine: name, driver, clocks (current and maximum, MHz), power limit and memory from
    nvidia-smi; why not, as a string."""
    fields = ("name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit",
              "memory.total", "pstate")
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        return f"nvidia-smi: {error}"
    return [dict(zip(fields, (value.strip() for value in line.split(",")))) for line in done.stdout.splitlines()]


def gpu_tests(json_path: Path) -> int:
    """`pytest -m gpu` on the test files that mention the `gpu` marker; the counts from its JUnit XML. Only those
    files: the others may import what the host lacks (Ray, moto, s3fs), which would fail their collection; a GPU
    test in such a file fails here, as it would on the host."""
    import xml.etree.ElementTree as ElementTree

    import pytest

    files = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                   if GPU_TEST_MARK.search(path.read_text()))
    report = json_path.with_suffix(".xml")
    code = int(pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={report}",
                            f"--rootdir={ROOT}", *files])) if files else 5  # pytest's "no tests collected"
    figures: dict[str, Any] = {"files": files, "exit_code": code}
    if report.exists():
        suite = ElementTree.parse(report).getroot().find("testsuite")
        figures.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
        figures["passed"] = figures["tests"] - figures["failures"] - figures["errors"] - figures["skipped"]
    json_path.write_text(json.dumps(figures, indent=2))
    return code


MASK_SIZES = ((320, 240), (240, 320), (256, 256), (300, 200))
"""`(width, height)` of the synthetic photos the masks step segments: both orientations and a square."""


def mask_agreement(json_path: Path, dry_run: bool) -> None:
    """Label maps of the tiny models on the GPU (fp32) against the CPU's, per image (see the module docstring). On
    a machine without CUDA, CPU against CPU: the code runs, the figures say so."""
    import torch

    from diffseg import DiffSeg, DiffSegConfig
    from diffseg.methods import METHODS
    from synthetic.photos import photo

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Plain fp32 on the GPU, as on the CPU: TF32 convolutions would make the two differ by rounding, not by code.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    resolution = 128 if dry_run else 256
    images = [photo(width, height, seed) for seed, (width, height) in enumerate(MASK_SIZES[:2 if dry_run else 4])]
    figures: dict[str, Any] = {"device": device, "reference": "cpu", "resolution": resolution, "cases": []}
    for model in ("tiny", "tiny-xl"):
        for method in METHODS:
            config = DiffSegConfig(method=method, resolution=resolution)
            maps = [DiffSeg.from_pretrained(model, config, device=where, dtype=torch.float32).segment(images)
                    for where in ("cpu", device)]
            scores = [agreement(a.numpy(), b.numpy()) for a, b in zip(*maps)]
            figures["cases"].append({"model": model, "method": method, "agreement": scores,
                                     "mean_agreement": sum(scores) / len(scores), "min_agreement": min(scores),
                                     "identical": sum(bool(torch.equal(a, b)) for a, b in zip(*maps)),
                                     "segments": [[int(m.max()) + 1 for m in side] for side in maps]})
            print(f"{model} {method}: {device} against cpu, agreement per image "
                  + " ".join(f"{s:.4f}" for s in scores), flush=True)
            json_path.write_text(json.dumps(figures, indent=2))


def agreement(a: Any, b: Any) -> float:
    """The fraction of pixels of two label maps (same shape, labels 0..K-1) whose labels agree once each label of
    `a` is matched to at most one of `b` so as to agree on the most pixels (Hungarian)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    a, b = np.asarray(a, dtype=np.int64).ravel(), np.asarray(b, dtype=np.int64).ravel()
    width = int(b.max()) + 1
    counts = np.bincount(a * width + b, minlength=(int(a.max()) + 1) * width).reshape(-1, width)
    rows, columns = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, columns].sum() / a.size)


def internal_step(name: str, json_path: Path, dry_run: bool) -> int:
    """Run the internal step `name`; its exit status."""
    sys.path.insert(0, str(ROOT))
    if name == "environment":
        environment_figures(json_path)
    elif name == "gpu-tests":
        return gpu_tests(json_path)
    else:
        mask_agreement(json_path, dry_run)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-figures.json", help="the figures file (JSON)")
    parser.add_argument("--wheels", default=str(ROOT / "gpu-wheels"), help="the folder of wheels to install")
    parser.add_argument("--steps", nargs="+", choices=[step.name for step in plan(False)],
                        help="run only these steps (default: all)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--dry-run", action="store_true", help="on CPU, tiny models, smallest sizes")
    parser.add_argument("--wheel-list", action="store_true", help="print the wheels the bundle needs, and exit")
    parser.add_argument("--step", choices=["environment", "gpu-tests", "masks"], help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wheel_list:
        print("\n".join(wheel_list()))
    elif args.step:
        sys.exit(internal_step(args.step, Path(args.json), args.dry_run))
    else:
        sys.exit(check(args))


if __name__ == "__main__":
    main()
