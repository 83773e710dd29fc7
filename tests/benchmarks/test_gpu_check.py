"""The offline GPU check (`benchmarks/gpu_check.py`): its dry run on a host-like environment (no Ray, s3fs, faiss or
moto), and its parts: installing wheels, the bundle's wheel list, steps cut off by their limit, the table's marks,
the masks' agreement, and the `gpu` marker on every CUDA-only test."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_check
from diffseg.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
ABSENT_ON_HOST = ("ray", "s3fs", "faiss", "moto")


def host_like(folder: Path) -> dict[str, str]:
    """An environment in which the packages the GPU host lacks cannot be imported: a module of each name that
    raises ImportError, first on PYTHONPATH (the check keeps it after its own entries, before site-packages)."""
    folder.mkdir()
    for name in ABSENT_ON_HOST:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU host')\n")
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.mark.integration
def test_the_dry_run_runs_every_step_without_what_the_host_lacks(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--wheels", str(tmp_path / "no-wheels")], cwd=ROOT, env=host_like(tmp_path / "blocked"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "figures in" in done.stdout
    data = json.loads(out.read_text())
    steps = data["steps"]
    assert list(steps) == [step.name for step in gpu_check.plan(dry_run=True)]
    assert all(entry["status"] == "ok" and entry["seconds"] > 0 for entry in steps.values())
    figures = {name: entry["figures"] for name, entry in steps.items()}
    assert figures["environment"]["versions"]["torch"] and figures["environment"]["cpus"] >= 1
    assert figures["gpu-tests"]["exit_code"] == 0 and figures["gpu-tests"]["tests"] >= 1
    assert figures["gpu-tests"]["skipped"] == figures["gpu-tests"]["tests"]  # no CUDA here
    cases = figures["masks"]["cases"]
    assert {(case["model"], case["method"]) for case in cases} == {
        (model, method) for model in ("tiny", "tiny-xl") for method in METHODS}
    assert all(case["agreement"] and min(case["agreement"]) == 1.0 for case in cases)  # CPU against CPU
    worker = figures["worker"]
    assert worker["images"] == 8 and worker["images_failed"] == 0 and worker["images_per_s"] > 0
    assert worker["load_s"] > 0 and worker["peak_gib"] > 0 and worker["gpu_busy"] is None
    assert figures["core"]["results"][0]["capture_ratio"] > 0
    assert [r["case"] for r in figures["methods"]["results"]] == ["ssd1b-diffcut", "ssd1b-diffseg"]
    assert all(r["images_per_s"] > 0 for r in figures["methods"]["results"])
    assert figures["ncut"]["eigh"][0]["cpu_ms"] > 0  # bench_ncut.py: eigh on the CPU against the GPU by size


def test_the_worker_benchmark_imports_no_ray():
    code = ("import sys\n"
            f"for name in {ABSENT_ON_HOST!r}:\n"
            "    sys.modules[name] = None  # importing it raises ImportError\n"
            "import benchmarks.bench_worker\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel of one module `name` with `VERSION = version`."""
    info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{member},,\n" for member in [*files, f"{info}/RECORD"]))
    return path


def test_install_puts_every_wheel_of_the_folder_in_the_target(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel(wheels, "gpu_check_demo", "1.2.3")
    done = gpu_check.install(wheels, tmp_path / "target")
    assert done["wheels"] == ["gpu_check_demo-1.2.3-py3-none-any.whl"]
    assert (tmp_path / "target" / "gpu_check_demo" / "__init__.py").read_text() == "VERSION = '1.2.3'\n"
    found = importlib.metadata.distributions(name="gpu_check_demo", path=[str(tmp_path / "target")])
    assert [d.version for d in found] == ["1.2.3"]


def test_without_wheels_install_uses_the_environment_or_says_what_is_missing(tmp_path, monkeypatch):
    assert gpu_check.install(tmp_path, tmp_path / "target")["wheels"] == []  # diffusers is installed here
    monkeypatch.setattr(gpu_check, "CHECK_NEEDS", ("no_such_package_for_the_check",))
    with pytest.raises(RuntimeError, match="no_such_package_for_the_check not installed.*gpu_bundle.sh"):
        gpu_check.install(tmp_path, tmp_path / "target")


def test_the_wheel_list_is_diffusers_and_what_it_needs_beyond_the_host():
    pinned = dict(line.split("==") for line in gpu_check.wheel_list())
    assert pinned["diffusers"] == importlib.metadata.version("diffusers")
    assert all(version == importlib.metadata.version(name) for name, version in pinned.items())
    host = {"torch", "transformers", "huggingface-hub", "numpy", "pillow", "safetensors", "filelock", "regex"}
    assert not host & set(pinned)  # the host has these (transformers needs them)
    assert {"importlib-metadata", "requests"} <= set(pinned)  # diffusers needs them, transformers does not


def test_a_step_past_its_limit_is_stopped_and_keeps_the_figures_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0)
    writes_then_hangs = ("import json, sys, time\n"
                         "open(sys.argv[-1], 'w').write(json.dumps({'device': 'cpu', 'images_per_s': 3.5}))\n"
                         "print('written', flush=True)\n"
                         "time.sleep(120)\n")
    step = gpu_check.Step("hangs", [sys.executable, "-c", writes_then_hangs], limit_s=3)
    figures = gpu_check.Figures(tmp_path / "figures.json", dry_run=True)
    entry = gpu_check.run_step(step, tmp_path, dict(os.environ), deadline=float("inf"), figures=figures)
    assert entry["status"] == "timed out after 3 s" and entry["seconds"] < 30
    assert entry["figures"] == {"device": "cpu", "images_per_s": 3.5} and entry["tail"] == ["written"]
    assert json.loads((tmp_path / "figures.json").read_text())["steps"]["hangs"] == entry


def test_a_step_without_time_left_is_not_started(tmp_path):
    step = gpu_check.Step("late", [sys.executable, "-c", "raise SystemExit(3)"], limit_s=60)
    figures = gpu_check.Figures(tmp_path / "figures.json", dry_run=True)
    entry = gpu_check.run_step(step, tmp_path, dict(os.environ), deadline=0.0, figures=figures)
    assert entry["status"] == "not run: out of time"


def run_data(dry_run: bool, device: str, images_per_s: float) -> dict:
    return {"dry_run": dry_run, "steps": {"worker": {"status": "ok", "seconds": 1.0, "figures": {
        "device": device, "images_per_s": images_per_s, "gpu_busy": 0.5, "peak_gib": 3.25}}}}


def test_the_table_judges_targets_only_on_figures_from_a_real_gpu_run():
    def rows(data: dict) -> list[str]:  # one per target, in order, at the end of the table
        return gpu_check.table(data)[-len(gpu_check.TARGETS):]

    real = rows(run_data(False, "cuda", 120.0))
    assert real[0].startswith(gpu_check.TARGETS[0].what) and real[0].endswith("PASS (goal 150)")
    assert real[1].endswith("FAIL")  # GPU busy 0.5 < 0.9
    assert "3.25 GiB" in real[2] and real[2].endswith("GiB")  # printed, not judged
    assert real[3].endswith("not measured")
    assert "FAIL" in rows(run_data(False, "cuda", 80.0))[0]
    for data in (run_data(True, "cuda", 120.0), run_data(False, "cpu", 120.0)):
        assert "n/a: not a GPU run" in rows(data)[0]


def test_agreement_matches_the_labels_of_two_maps_one_to_one():
    a = np.array([[0, 0, 1, 1], [2, 2, 1, 1]])
    assert gpu_check.agreement(a, (a + 1) % 3) == 1.0  # the same segments under other ids
    b = a.copy()
    b[0, 0] = 1
    assert gpu_check.agreement(a, b) == 7 / 8
    assert gpu_check.agreement(a, np.zeros_like(a)) == 4 / 8  # one label can match only one


def _cuda_skip(node: ast.expr, aliases: set[str]) -> bool:
    """Whether a decorator is a `skipif` on CUDA, written out or through a module-level alias."""
    if isinstance(node, ast.Name):
        return node.id in aliases
    return isinstance(node, ast.Call) and ast.unparse(node.func).endswith("mark.skipif") and "cuda" in ast.unparse(node)


def _gpu_marked(node: ast.FunctionDef | ast.ClassDef) -> bool:
    return any(ast.unparse(decorator).endswith("mark.gpu") for decorator in node.decorator_list)


def test_every_test_skipped_without_cuda_has_the_gpu_marker():
    """The check's gpu-tests step runs `-m gpu`: a CUDA-only test without the marker would never run anywhere."""
    missing = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        aliases = {target.id for node in tree.body if isinstance(node, ast.Assign) and _cuda_skip(node.value, set())
                   for target in node.targets if isinstance(target, ast.Name)}
        if any(isinstance(node, ast.Assign) and "pytestmark" in ast.unparse(node) and "mark.gpu" in ast.unparse(node)
               for node in tree.body):
            continue
        for node in tree.body:
            members = node.body if isinstance(node, ast.ClassDef) and not _gpu_marked(node) else []
            for test in [node, *members]:
                if (isinstance(test, ast.FunctionDef | ast.ClassDef) and not _gpu_marked(test)
                        and any(_cuda_skip(decorator, aliases) for decorator in test.decorator_list)):
                    missing.append(f"{path.relative_to(ROOT)}:{test.lineno} {test.name}")
    assert not missing, "CUDA-only tests without @pytest.mark.gpu: " + ", ".join(missing)
