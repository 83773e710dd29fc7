"""The labeling job on a real multi-node Ray cluster on this machine: losing a node, a small object store."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cluster import kill_node, start_ray_head, start_ray_worker, stop
from tests.pipeline.labeling.data import good_images, read_output, write_files

ROOT = Path(__file__).resolve().parents[3]
LABEL = str(ROOT / "jobs" / "label.py")
ONE_CPU_ACTORS = ["--model", "tiny", "--resolution", "128", "--cpus-per-actor", "1", "--no-progress"]


@pytest.fixture
def cluster(tmp_path):
    """Start a cluster of nodes with one CPU, no GPU, 6 GiB of Ray memory (logical: as the shared test cluster,
    the most an actor reserves by default, so CPUs limit the actors) and 80 MB object stores: `cluster(nodes)`
    returns its address and the worker nodes' processes. Everything is stopped afterwards."""
    processes = []

    def start(nodes: int) -> tuple[str, list[subprocess.Popen]]:
        head, address, _ = start_ray_head(Path(tempfile.mkdtemp(prefix="dsmulti-")), cpus=1, gpus=0, memory_gib=6,
                                          object_store_mb=80)
        processes.append(head)
        workers = [start_ray_worker(address, tmp_path / f"worker-{i}.log", cpus=1, gpus=0, memory_gib=6,
                                    object_store_mb=80) for i in range(nodes - 1)]
        processes.extend(workers)
        return address, workers

    yield start
    for process in reversed(processes):
        stop(process)


def job(address: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, LABEL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def summary_of(stdout: str) -> dict:
    """The job's JSON summary, which must be the last line it prints, after any line forwarded from its actors."""
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("{"), f"the last line printed is not the summary: {stdout[-2000:]}"
    return json.loads(last)


@pytest.mark.integration
def test_a_job_survives_losing_a_node_and_writes_every_image_once(tmp_path, cluster):
    address, workers = cluster(3)
    images = good_images(36)
    write_files(tmp_path / "in", images)
    running = job(address, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--shard-size", "1",
                  "--num-actors", "3", "--max-retries", "5", *ONE_CPU_ACTORS)
    done = tmp_path / "out" / "_done"
    deadline = time.monotonic() + 240
    while not (done.exists() and len(list(done.iterdir())) >= 3) and time.monotonic() < deadline:
        assert running.poll() is None, running.stderr.read()
        time.sleep(0.05)
    kill_node(workers[1])
    assert len(list(done.iterdir())) < 36, "the job ended before the node was lost"

    stdout, stderr = running.communicate(timeout=400)
    assert running.returncode == 0, stderr[-3000:]
    summary = summary_of(stdout)
    assert summary["shards_written"] == 36 and summary["shards_failed"] == 0 and summary["images_ok"] == 36
    assert summary["retries"] >= 1  # the lost node's shards were handed to the others
    rows = read_output(str(tmp_path / "out"))
    assert sorted(row["image_id"] for row in rows) == sorted(images)
    assert all(row["status"] == "ok" for row in rows)


@pytest.mark.integration
def test_data_larger_than_the_object_store_goes_through_with_bounded_shards_in_flight(tmp_path, cluster):
    address, _ = cluster(2)
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(64):  # 64 x 3 MB of incompressible pixels, more than the 2 x 80 MB of object store
        noise = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / f"noise-{i:02d}.png", compress_level=0)
    assert sum(f.stat().st_size for f in folder.iterdir()) > 2 * 80 * 2**20
    running = job(address, "--input", str(folder), "--output", str(tmp_path / "out"), "--shard-size", "4",
                  "--num-actors", "2", *ONE_CPU_ACTORS)
    stdout, stderr = running.communicate(timeout=400)
    assert running.returncode == 0, stderr[-3000:]
    summary = summary_of(stdout)
    assert summary["images_ok"] == 64 and summary["shards_written"] == 16
    assert 1 <= summary["in_flight_peak"] <= 2 * 2
    assert "OutOfMemory" not in stderr and "spilled" not in stderr.lower()
