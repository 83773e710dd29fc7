"""Smoke runs of every benchmark script at its smallest size, as a user runs it: a subprocess from the repository
root. Each must exit 0 and write figures that were measured (finite and positive), so that a script that crashes
or silently stops measuring fails `make test`; the figures' values are not checked. The scripts that use Ray join
the session's shared cluster (`--address`) rather than start one each.

The scripts `run_all.py` covers (core, actor, job, methods) run once, through `run_all.py --dry-run`."""

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from benchmarks.bench_methods import CASES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `benchmarks/{script}.py` with `args` from the repository root."""
    # One OpenMP thread: where anything else runs (the suite's Ray workers, a shared machine), threads spinning
    # against it make each BLAS or LAPACK call several times slower (a 1024 x 1024 `eigh`: 0.3 s on one thread,
    # 2 to 6 s on two of a loaded 2-core machine). The figures mean nothing here anyway.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def output_of(result: subprocess.CompletedProcess) -> str:
    """The end of a run's output, for a failure's message."""
    return f"exit {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def bench(script: str, *args: str, out: Path) -> dict:
    """The figures of `benchmarks/{script}.py` run with `args` and `--json out`; fails on a non-zero exit."""
    result = run(script, *args, "--json", str(out))
    assert result.returncode == 0, output_of(result)
    return json.loads(out.read_text())


def assert_measured(figures: dict, keys: Iterable[str]) -> None:
    """Each of `keys` is a finite positive number in `figures`."""
    for key in keys:
        value = figures[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, f"{key} = {value!r}"


@pytest.fixture(scope="module")
def dry_run(ray_cluster, tmp_path_factory) -> tuple[dict, str]:
    """The entries of one `run_all.py --dry-run`, per script, and its output. Its exit status is each test's to
    check (one script failing makes it 1), so that only the failing script's test fails."""
    out = tmp_path_factory.mktemp("run_all") / "figures.json"
    result = run("run_all", "--dry-run", "--address", ray_cluster, "--out", str(out), timeout=480)
    assert out.exists(), output_of(result)
    figures = json.loads(out.read_text())
    assert figures["dry_run"] is True
    return figures["benchmarks"], output_of(result)


def check_core(figures: dict) -> None:
    assert figures["model"] == "tiny" and figures["results"]
    for result in figures["results"]:
        assert_measured(result, ["stock_ms", "capture_ms", "post_ms", "post_scored_ms", "images_per_s",
                                 "peak_stock_gib", "peak_capture_gib", "peak_post_gib"])


def check_actor(figures: dict) -> None:
    assert figures["images"] == 2
    assert_measured(figures, ["images_per_s", "actor_cpu_ms_per_image", "machine_cpu_ms_per_image"])
    assert_measured(figures["stages_ms"], figures["stages_ms"])


def check_job(figures: dict) -> None:
    assert [result["suite"] for result in figures["results"]] == ["full", "tiny"]
    for result in figures["results"]:
        assert result["model"] == "tiny" and result["images"] == 1
        assert_measured(result, ["loop_s", "job_labeling_s", "job_total_s", "loop_images_per_s",
                                 "job_images_per_s", "job_over_loop"])


def check_methods(figures: dict) -> None:
    assert [result["case"] for result in figures["results"]] == list(CASES)
    for result in figures["results"]:
        assert result["model"] in ("tiny", "tiny-xl") and result["segments"] and min(result["segments"]) > 0
        assert_measured(result, ["forward_ms", "post_ms", "images_per_s", "peak_gib"])


@pytest.mark.parametrize("script, check", [("bench_core", check_core), ("bench_actor", check_actor),
                                           ("bench_job", check_job), ("bench_methods", check_methods)])
def test_run_all_dry_run_runs_every_script_it_covers(dry_run, script, check):
    entries, output = dry_run
    assert script in entries and entries[script]["exit_code"] == 0, output
    check(entries[script]["figures"])


def test_bench_eval(tmp_path):
    figures = bench("bench_eval", "--images", "2", "--repeat", "1", out=tmp_path / "figures.json")
    assert figures["images"] == 2
    assert_measured(figures["metrics_ms_per_image"], ["per-image", "dataset"])
    assert_measured(figures["post_processing_s_per_image"], ["diffseg", "kmeans-c K=6", "kmeans-s K=8"])
    assert_measured(figures["scoring_ms_per_image"], ["loop", "score_model"])


def test_bench_driver(tmp_path, ray_cluster):
    figures = bench("bench_driver", "--shards", "4", "--actors", "1", "--address", ray_cluster,
                    out=tmp_path / "figures.json")
    assert figures["shards_written"] == 4 and figures["shards_failed"] == 0
    assert_measured(figures, ["planning_s", "labeling_s", "shards_per_s", "in_flight_peak", "driver_after_init_mib",
                              "driver_peak_mib"])


@pytest.mark.parametrize("store", [[], ["--s3"]], ids=["synthetic", "s3"])
def test_bench_plan(tmp_path, store):
    figures = bench("bench_plan", "--files", "2000", "--grow", "0.01", *store, out=tmp_path / "figures.json")
    first, rerun = figures["first"], figures["rerun"]
    assert (first["files"], first["shards"], first["files_new"]) == (2000, 2, 2000)
    assert (rerun["files"], rerun["shards"], rerun["shards_skipped"]) == (20, 1, 2), "only the new keys, once"
    assert (rerun["files_changed"], rerun["files_vanished"]) == (0, 0)
    for run in (first, rerun):
        assert_measured(run, ["planning_s", "peak_rss_mib"])
        assert run["first_shard_s"] <= run["planning_s"] and run["growth_mib"] >= 0
    assert {target["target"]: target["met"] for target in figures["targets"]}["re-run labels only the new files"]


def test_bench_cluster(tmp_path, ray_cluster):
    figures = bench("bench_cluster", "--descriptors", "2000", "--per-shard", "500", "--dim", "8", "--classes", "4",
                    "--sample", "1000", "--actors", "1", "--address", ray_cluster, out=tmp_path / "figures.json")
    [result] = figures["results"]
    assert result["descriptors"] == 2000 and result["shards"] == 4 and result["failed"] == 0
    assert_measured(result, ["images", "sample", "write_input_s", "sample_s", "train_s", "assign_s", "total_s",
                             "driver_peak_mib", "worker_peak_mib"])


def test_bench_cuts(tmp_path):
    figures = bench("bench_cuts", "--grids", "12", "--noises", "0.3", "--seeds", "1", out=tmp_path / "figures.json")
    assert [case["family"] for case in figures["cases"]] == ["rectangles", "voronoi", "nested"]
    for case in figures["cases"]:
        for method in ("diffcut", "kway"):
            assert case[method]["segments"] >= 1 and 0 <= case[method]["miou"] <= 1
            assert_measured(case[method], ["seconds"])
        assert case["kway"]["ncut"] >= 0 and case["diffcut"]["ncut"] >= 0
    assert figures["targets"][0]["target"] == "K-way NCut value never above DiffCut's"
    [noise] = figures["structureless"]
    for method in ("diffcut", "kway"):
        assert noise[method]["segments"] >= 1 and isinstance(noise[method]["stopped"], bool)
        assert_measured(noise[method], ["seconds"])


def test_bench_edges(tmp_path):
    figures = bench("bench_edges", "--size", "256", "--shapes", "5", "--blurs", "0", "--seeds", "1", "--repeat", "1",
                    out=tmp_path / "figures.json")
    [case] = figures["cases"]
    assert (case["size"], case["shapes"], case["blur"], case["seed"]) == (256, 5, 0.0, 0)
    for variant in ("plain", "pamr"):
        assert 0 <= case[variant]["bf"] <= 1 and 0 <= case[variant]["miou"] <= 1 and case[variant]["segments"] >= 1
        assert_measured(case[variant], ["seconds"])
    assert_measured(case["pamr_alone"], ["2x", "4x"])
    assert [target["target"] for target in figures["targets"]] == [
        "BF@2px higher with PAMR on average", "PAMR at 2x costs no more than the post-processing without it"]
