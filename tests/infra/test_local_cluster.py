"""infra/local-cluster.sh for real: it starts a head and two one-CPU worker nodes on this machine, the labeling job
runs on them as a driver joining RAY_ADDRESS, `status` sees the nodes, and `stop` leaves none of them behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.pipeline.labeling.data import good_images, write_files

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "local-cluster.sh"
LABEL = ROOT / "jobs" / "label.py"
BIN = Path(sys.executable).parent


def ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(port: int) -> bool:
    """Whether a server could listen on `port` on every interface now (as the script checks)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def cluster_ports() -> tuple[int, int, int]:
    """The GCS port P (P+1 free too, for the Ray client server), the dashboard port and the worker port base:
    a random free spot below the kernel's ephemeral range, so neither connections nor the ports other tests
    take with bind(0) land in the cluster's ranges (the script picks free node and worker ports from there)."""
    top = ephemeral_ports_start() - 3200
    for _ in range(100):
        port = random.randrange(10000, top)
        if all(bindable(p) for p in (port, port + 1, port + 2)):
            return port, port + 2, port + 100
    raise RuntimeError("no free ports for the cluster")


def session_processes(sids: list[int]) -> list[str]:
    """The live processes (not zombies) whose session is one of `sids` (the recorded nodes)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    alive = []
    for line in out.splitlines():
        pid, sid, stat, args = (line.split(None, 3) + [""])[:4]
        if int(sid) in sids and not stat.startswith("Z"):
            alive.append(f"{pid} {args[:120]}")
    return alive


@pytest.mark.integration
def test_the_job_labels_on_a_cluster_the_script_starts_and_stop_leaves_nothing(tmp_path):
    started = time.monotonic()
    # Short: Ray's sockets go under it, in paths of at most 107 bytes (the script refuses longer).
    state = Path(tempfile.mkdtemp(prefix="dslc-"))
    port, dashboard, worker_base = cluster_ports()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DIFFSEG_CLUSTER_DIR=str(state))
    # tests/conftest.py set RAY_AUTH_MODE=token and a RAY_AUTH_TOKEN of the session: the script must use it.
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"]

    def script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)

    write_files(tmp_path / "in", good_images(6))
    recorded: list[int] = []
    try:
        start = script("start", "--workers", "2", "--cpus", "1", "--gpus-per-worker", "0",
                       "--object-store-memory", "80000000", "--port", str(port), "--dashboard-port", str(dashboard),
                       "--worker-port-base", str(worker_base))
        recorded = [int(pid) for pid in (state / "pids").read_text().split()] if (state / "pids").exists() else []
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"export RAY_ADDRESS=127.0.0.1:{port}" in start.stdout
        assert not (state / "auth_token").exists(), "the token of the environment, not a new one"
        assert len(recorded) == 3
        started_at = time.monotonic() - started

        status = script("status", timeout=60)
        assert status.returncode == 0 and "3 of 3 recorded node process(es) running" in status.stdout, status.stdout

        job = subprocess.run([sys.executable, str(LABEL), "--input", str(tmp_path / "in"), "--output",
                              str(tmp_path / "out"), "--model", "tiny", "--resolution", "128", "--num-actors", "2",
                              "--cpus-per-actor", "1", "--no-progress"],
                             capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
                             env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        summary = json.loads(job.stdout.strip().splitlines()[-1])
        assert summary["images_ok"] == 6, summary
        print(f"cluster up in {started_at:.1f} s, job done at {time.monotonic() - started:.1f} s")
    finally:
        if not recorded and (state / "pids").exists():
            recorded = [int(pid) for pid in (state / "pids").read_text().split()]
        stop = script("stop", timeout=120)
        left = session_processes(recorded)
        for log in state.glob("*.log"):  # kept with the test's tmp_path; Ray's own logs go with the state
            shutil.copy(log, tmp_path / log.name)
        if not left:
            shutil.rmtree(state, ignore_errors=True)
    assert stop.returncode == 0, stop.stderr
    assert not left, f"still running after stop: {left}"
    print(f"stopped at {time.monotonic() - started:.1f} s")
