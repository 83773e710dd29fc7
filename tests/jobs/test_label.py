"""`jobs/label.py` as users run it: a subprocess, on its own or through `ray job submit`."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.store.dataset import decode_descriptors
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.cluster import free_port, start_ray_head, stop
from tests.jobs.stores import NO_CREDENTIALS, at_endpoint, does_not_answer, nothing_listening, without_credentials
from tests.pipeline.labeling.data import encoded, good_images, read_output, tar_bytes, write_files

ROOT = Path(__file__).resolve().parents[2]
LABEL = str(ROOT / "jobs" / "label.py")
FAST = ["--model", "tiny", "--resolution", "256", "--num-actors", "1", "--cpus-per-actor", "1", "--no-progress"]


def label(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, LABEL, *args], capture_output=True, text=True, timeout=timeout, env=env)


def refused_before_ray(*args: str, env: dict | None = None) -> str:
    """The one stderr line of a run refused with exit status 2 before Ray started (nor any model was loaded)."""
    started = time.monotonic()
    result = label(*args, "--no-progress", timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 20 and "Ray" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) == 1
    return result.stderr.strip()


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
    (["--kl-threshold", "high"], "error: argument --kl-threshold: not a number"),
    (["--frobnicate"], "error: unrecognized arguments: --frobnicate"),
    (["--crop", "sideways"], "error: argument --crop: invalid choice: 'sideways'"),
    (["--storage-options", "{oops"], "error: --storage-options is not valid JSON"),
    (["--num-points", "1"], "error: num_points"),
    (["--gpus-per-actor", "2"], "error: --gpus-per-actor must be at most 1, got 2: a model replica runs on one GPU"),
    (["--max-files", "0"], "error: --max-files must be at least 1, got 0"),
])
def test_bad_flags_are_one_line_and_exit_two(tmp_path, args, message):
    result = label("--input", str(tmp_path), "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_cluster_address_where_nothing_answers_is_one_line_and_exit_two(tmp_path):
    port = free_port()
    started = time.monotonic()
    result = label("--input", str(ROOT / "samples"), "--output", str(tmp_path / "out"), "--model", "tiny",
                   "--address", f"127.0.0.1:{port}", "--no-progress", timeout=120)
    assert result.returncode == 2 and time.monotonic() - started < 60
    assert result.stderr.strip() == f"error: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused); " \
                                    "check --address or RAY_ADDRESS"
    assert not (tmp_path / "out").exists(), "a run that never went ahead writes nothing (not even its ignored files)"


def test_an_unreadable_input_is_one_line_and_exit_two(tmp_path):
    result = label("--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'} does not exist"


def test_an_input_or_output_that_is_a_file_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "file").write_text("")
    samples, file = str(ROOT / "samples"), str(tmp_path / "file")
    assert refused_before_ray("--input", samples, "--output", file, "--model", "tiny") == (
        f"error: --output {file} is a file; give a folder (a new one, or an earlier run's output to go on with it)")
    assert refused_before_ray("--input", f"{samples}/chelsea.jpg", "--output", str(tmp_path / "out"), "--model",
                              "tiny") == (
        f"error: --input {samples}/chelsea.jpg is a file; give the folder or prefix that holds the images, tar or "
        "Parquet files (to label one file, put it in a folder of its own)")


def test_a_model_path_that_is_no_model_folder_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "empty").mkdir()
    where = ["--input", str(ROOT / "samples"), "--output", str(tmp_path / "out")]
    assert refused_before_ray(*where, "--model", str(tmp_path / "missing")) == (
        f"error: --model {tmp_path / 'missing'}: no such folder; give a folder in the diffusers layout, a Hub id, or "
        "tiny for a smoke run")
    assert refused_before_ray(*where, "--model", str(tmp_path / "empty")) == (
        f"error: --model {tmp_path / 'empty'} is not a diffusers model folder (no model_index.json nor unet/ in it); "
        "give the folder that holds them")
    assert not (tmp_path / "out").exists()


def label_script():
    """`jobs/label.py` imported as a module (its functions, without a subprocess)."""
    spec = importlib.util.spec_from_file_location("label_script", LABEL)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_model_folders_hub_ids_and_built_ins_pass_the_model_check(tmp_path, monkeypatch):
    script = label_script()
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "xl").mkdir()
    (tmp_path / "xl" / "model_index.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for model in [str(tmp_path / "sd"), "./xl", "xl", "tiny", "acme/not-here", "gpt2"]:
        script.check_model(model)
    for model in ["./missing", "../missing", "~/missing-model-folder", "a/b/c", str(tmp_path)]:
        with pytest.raises(ValueError, match=r"^--model "):
            script.check_model(model)


def test_the_account_counts_masks_coarser_than_asked_only_when_there_are_some():
    from pipeline.labeling.driver import Summary
    from pipeline.labeling.job import LabelJob

    script, job = label_script(), LabelJob(input="in", output="out")
    assert "coarser" not in script._account(job, Summary(images_ok=3))
    assert ("; 2 mask(s) coarser than the settings ask for (their rows' `warning` says why: a cut that stopped at its "
            "work bound)") in script._account(job, Summary(images_ok=3, images_warned=2))


def test_s3_without_credentials_is_one_line_before_ray_starts(tmp_path, s3_endpoint):
    env = without_credentials(tmp_path)
    given = ["--model", "tiny", "--storage-options", json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}})]
    assert refused_before_ray("--input", "s3://nope/x", "--output", str(tmp_path / "out"), *given, env=env) == (
        f"error: --input s3://nope/x: {NO_CREDENTIALS}")
    assert refused_before_ray("--input", str(ROOT / "samples"), "--output", "s3://nope/out", *given, env=env) == (
        f"error: --output s3://nope/out: {NO_CREDENTIALS}")


def test_an_s3_endpoint_that_does_not_answer_is_one_line_before_ray_starts(tmp_path):
    endpoint = nothing_listening()
    assert refused_before_ray("--input", "s3://nope/x", "--output", str(tmp_path / "out"), "--model", "tiny",
                              "--storage-options", at_endpoint(endpoint)) == (
        f"error: --input s3://nope/x: {does_not_answer(endpoint, 'nope/x')}")


@pytest.mark.integration
def test_a_failed_shard_gives_exit_one_and_a_summary(tmp_path, ray_cluster):
    write_files(tmp_path / "in", {name: b"" for name in (".hidden.tar", "a.json", "b.json", "c.json", "d.json",
                                                        "notes.txt")})
    (tmp_path / "in" / "good.tar").write_bytes(tar_bytes(good_images(2)))
    (tmp_path / "in" / "broken.tar").write_bytes(b"\x00garbage" * 200)
    result = label("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--max-retries", "0", *FAST)
    assert result.returncode == 1, result.stderr
    summary = summary_of(result)
    assert {k: summary[k] for k in ("images_ok", "images_failed", "shards_written", "shards_skipped",
                                    "shards_failed")} == {"images_ok": 2, "images_failed": 0, "shards_written": 1,
                                                          "shards_skipped": 0, "shards_failed": 1}
    assert summary["seconds"] > 0 and summary["failed"][0]["shard"] == "broken"
    assert (summary["files_ignored"], summary["ignored_files"]) == (6, [".hidden.tar", "a.json", "b.json", "c.json",
                                                                        "d.json"])
    listed = summary["ignored_files_file"]
    assert listed == Location(str(tmp_path / "out")).uri(f"_runs/{summary['run_id']}.ignored.jsonl")
    assert [json.loads(line) for line in Path(listed.removeprefix("file://")).read_text().splitlines()] == [
        {"key": key} for key in (".hidden.tar", "a.json", "b.json", "c.json", "d.json", "notes.txt")]
    assert result.stderr.splitlines()[-1].endswith("; 6 file(s) under the input ignored (hidden, or not of the "
                                                   "input's kind): .hidden.tar, a.json, b.json, c.json, d.json, ... "
                                                   f"(all listed in {listed})")


@pytest.mark.integration
def test_a_killed_driver_is_recovered_by_running_the_command_again(tmp_path, ray_cluster):
    images = good_images(12)
    write_files(tmp_path / "in", images)
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--shard-size", "2", *FAST]
    driver = subprocess.Popen([sys.executable, LABEL, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / "out" / "_done"
    deadline = time.monotonic() + 180
    while not (done.exists() and any(done.iterdir())) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = len(list(done.iterdir()))
    assert 1 <= finished < 6, "the driver was not killed mid-job"

    result = label(*args)
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["shards_skipped"] >= finished and summary["shards_skipped"] + summary["shards_written"] == 6
    rows = read_output(str(tmp_path / "out"))
    assert sorted(row["image_id"] for row in rows) == sorted(images)
    assert all(row["status"] == "ok" for row in rows)


@pytest.mark.integration
def test_ray_job_submit_runs_the_job_on_a_cluster(tmp_path):
    write_files(tmp_path / "in", good_images(3))
    head, _, dashboard = start_ray_head(Path(tempfile.mkdtemp(prefix="dsjob-")), cpus=4, gpus=0, memory_gib=24,
                                        object_store_mb=128, dashboard=True, worker_ports=(21000, 21999))
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        result = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", dashboard,
             "--working-dir", str(ROOT), "--", "python", "jobs/label.py", "--input", str(tmp_path / "in"),
             "--output", str(tmp_path / "out"), *FAST],
            capture_output=True, text=True, timeout=300, env=env)
    finally:
        stop(head)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary_line = next(line for line in result.stdout.splitlines() if line.startswith("{\"images_ok\""))
    assert json.loads(summary_line)["images_ok"] == 3
    assert len(read_output(str(tmp_path / "out"))) == 3


@pytest.mark.integration
def test_actors_the_cluster_cannot_host_are_refused_at_once_or_after_the_startup_timeout(tmp_path, ray_cluster):
    write_files(tmp_path / "in", good_images(2))
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--gpus-per-actor", "1", *FAST]
    started = time.monotonic()
    refused = label(*args)
    assert refused.returncode == 2 and time.monotonic() - started < 60
    assert re.fullmatch(r"error: --num-actors 1: the cluster can host 0 actor\(s\) of 1 CPU\(s\), 1 GPU\(s\) and "
                        r"2 GiB memory now \(node [^:]+: 8 CPU, 0 GPU, [\d.]+ GiB; free: .*\); try --gpus-per-actor 0 "
                        r"\(CPU actors\), or --startup-timeout to let an autoscaler add nodes",
                        refused.stderr.splitlines()[-1]), refused.stderr
    started = time.monotonic()
    waited = label(*args, "--startup-timeout", "5")
    assert waited.returncode == 2 and time.monotonic() - started >= 5
    assert waited.stderr.splitlines()[-1].startswith(
        "error: the cluster did not start 1 actor(s) of 1 CPU(s), 1 GPU(s) and 2 GiB memory within --startup-timeout "
        "5 s (1 not placed; node ")
    assert not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.integration
def test_more_actors_than_a_local_machine_hosts_are_refused_in_one_line(tmp_path):
    """The command of the issue that hung: a private local Ray, default CPUs per actor (a whole node each). Run as a
    user runs it, without the suite's Ray token settings: the first line names the cluster, and Ray warns of
    nothing (no token-authentication notice)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, LABEL, "--input", str(ROOT / "samples"), "--output", str(tmp_path / "out"),
                             "--model", "tiny", "--num-actors", "2", "--shard-size", "1", "--gpus-per-actor", "0",
                             "--no-progress"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and time.monotonic() - started < 120
    assert re.fullmatch(r"Ray: a private local Ray \(ends with this job\); 1 node\(s\), [^\n]*\n"
                        r"error: --num-actors 2: the cluster can host 1 actor\(s\) of .* now \(node .*\); try "
                        r"--num-actors 1, .*\n", result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_descriptors_are_written_when_asked_and_outputs_never_mix_with_and_without(tmp_path, ray_cluster):
    write_files(tmp_path / "in", good_images(3))
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST]
    result = label(*args, "--descriptors")
    assert result.returncode == 0, result.stderr
    rows = read_output(str(tmp_path / "out"))
    assert all(len(decode_descriptors(row["descriptors"], row["num_segments"])) == row["num_segments"]
               for row in rows)
    assert json.loads((tmp_path / "out" / "_diffseg.json").read_text())["descriptors"] is True
    refused = label(*args)
    assert refused.returncode == 2
    assert "already holds masks made with a different descriptors" in refused.stderr


@pytest.mark.integration
def test_a_folder_that_grew_between_runs_ends_with_every_image_exactly_once(tmp_path, ray_cluster):
    """The issue's case: 20 PNGs in shards of 5, then 20 more whose names sort between them."""
    first = {f"img-{2 * i:03d}.png": encoded(photo(32, 24, seed=i)) for i in range(20)}
    between = {f"img-{2 * i + 1:03d}.png": encoded(photo(24, 32, seed=20 + i)) for i in range(20)}
    write_files(tmp_path / "in", first)
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--shard-size", "5", *FAST]
    assert label(*args).returncode == 0
    write_files(tmp_path / "in", between)
    grown = label(*args)
    assert grown.returncode == 0, grown.stderr
    summary = summary_of(grown)
    assert {k: summary[k] for k in ("files_new", "files_changed", "files_vanished", "shards_written",
                                    "shards_skipped", "images_ok")} == {
        "files_new": 20, "files_changed": 0, "files_vanished": 0, "shards_written": 4, "shards_skipped": 4,
        "images_ok": 20}
    assert grown.stderr.splitlines()[-1].startswith("20 new input file(s) found, 20 image(s) labeled, ")
    ids = [row["image_id"] for row in read_output(str(tmp_path / "out"))]
    assert sorted(ids) == sorted({**first, **between}) and len(set(ids)) == 40

    (tmp_path / "in" / "img-013.png").unlink()
    reported = label(*args)
    assert reported.returncode == 0, reported.stderr
    changes = summary_of(reported)["changes"]
    assert reported.stderr.strip().endswith(f"; 0 file(s) changed and 1 vanished since they were labeled (listed in "
                                            f"{changes})")
    assert json.loads(Path(changes.removeprefix("file://")).read_text())["vanished"][0]["key"] == "img-013.png"
