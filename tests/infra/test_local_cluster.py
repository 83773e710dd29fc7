"""infra/local_cluster.py (what infra/local-cluster.sh runs): its argument handling, port picking and node
waiting without Ray, the retry of a node whose port is taken with real `ray start` processes, and end to end: it
starts a head and two one-CPU worker nodes while another Ray head runs on the machine, the labeling job runs on
them as a driver joining RAY_ADDRESS, `status` sees the nodes, and `stop` leaves none of them behind."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster import start_ray_head
from tests.cluster import stop as stop_process
from tests.pipeline.labeling.data import good_images, write_files

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "local-cluster.sh"
MODULE = ROOT / "infra" / "local_cluster.py"
LABEL = ROOT / "jobs" / "label.py"
BIN = Path(sys.executable).parent


spec = importlib.util.spec_from_file_location("infra_local_cluster", MODULE)
lc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = lc  # dataclasses look their module up there
spec.loader.exec_module(lc)


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


def cli(*args: str, state: Path, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess:
    """The wrapper script as users run it; no Ray on PATH unless `path` has it."""
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": path, "DIFFSEG_CLUSTER_DIR": str(state)})


def held(port: int = 0) -> socket.socket:
    """A listener on `port` (0: one the kernel picks) on every interface, as another program holding it."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", port))
    sock.listen()
    return sock


# --- arguments ------------------------------------------------------------------------------------------------

def test_start_options_default_and_parse():
    assert lc.parse_start([]) == lc.Options()
    options = lc.parse_start(["--workers", "3", "--cpus", "4", "--gpus-per-worker", "1", "--object-store-memory",
                              "80000000", "--port", "7000", "--dashboard-port", "7005", "--worker-port-base", "30000",
                              "--dry-run"])
    assert options == lc.Options(workers=3, cpus=4, gpus_per_worker=1, object_store_memory=80000000, port=7000,
                                 dashboard_port=7005, worker_port_base=30000, dry_run=True)


@pytest.mark.parametrize("args, message", [
    (["--nodes", "2"], "unknown option --nodes (see --help)"),
    (["--workers"], "options take whole numbers, got ''"),
    (["--cpus", "-1"], "options take whole numbers, got '-1'"),
    (["--port", "6e3"], "options take whole numbers, got '6e3'"),
    (["--workers", "0"], "--workers: at least 1 (the head runs no tasks)"),
    (["--port", "80"], "ports below 1024 are the system's"),
    (["--port", "65520"], "ports out of range"),
    (["--worker-port-base", "63000"], "ports out of range"),
    (["--dashboard-port", "6391"], "--dashboard-port: taken by --port P (the GCS) or P+1"),
])
def test_start_refuses_bad_options(args, message):
    with pytest.raises(lc.ClusterError, match=f"^{re.escape(message)}$"):
        lc.parse_start(args)


@pytest.mark.parametrize("args, code, message", [
    (["start", "--workers", "x"], 2, "local-cluster: options take whole numbers, got 'x'"),
    (["restart"], 2, "local-cluster: unknown command restart (start, status, stop)"),
    (["stop", "--force"], 2, "local-cluster: unknown option --force (stop takes --all only)"),
    (["start"], 2, "local-cluster: no 'ray' on PATH: activate the project's environment (. .venv/bin/activate)"),
    (["status"], 1, "local-cluster: 0 of 0 recorded node process(es) running"),
])
def test_cli_errors_are_one_line_with_an_exit_status(tmp_path, args, code, message):
    run = cli(*args, state=tmp_path / "c")
    assert run.returncode == code
    assert (run.stderr + run.stdout).strip().startswith(message), run.stderr
    assert len((run.stderr + run.stdout).strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_help_and_stop_with_nothing_started(tmp_path):
    shown = cli("--help", state=tmp_path).stdout
    assert shown.splitlines()[0].startswith("infra/local-cluster.sh start [--workers N]")
    assert cli("start", "--port", "7000", "--help", state=tmp_path).stdout == shown
    run = cli("stop", state=tmp_path)
    assert (run.returncode, run.stdout.strip()) == (0, f"local-cluster: stopped 0 node(s) started from {tmp_path}")


# --- ports ----------------------------------------------------------------------------------------------------

def test_a_held_port_is_not_free_and_is_once_let_go():
    sock = held()
    port = sock.getsockname()[1]
    assert not lc.port_free(port)
    sock.close()
    assert lc.port_free(port)


def test_node_ports_skip_held_and_taken_ports():
    # Ports above the ephemeral range start are used only through bind(0) here: pick a quiet spot below it.
    port, _, worker_base = cluster_ports()
    options = lc.Options(workers=2, port=port, worker_port_base=worker_base)
    taken = [range(port, port + 2), range(port + 11, port + 12)]
    sockets = [held(port + 10), held(worker_base + 500)]
    try:
        head = lc.pick_node_ports(0, options, taken)
        worker = lc.pick_node_ports(1, options, taken + head.all())
    finally:
        for sock in sockets:
            sock.close()
    # Exact ports would make this test fail whenever some other program holds one nearby (Ray workers of other
    # clusters bind ports in this range): what is asserted holds whatever else runs.
    given = head.node + head.metrics + worker.node
    assert given == sorted(given) and len(set(given)) == 14, "each the next free port, none given twice"
    assert head.node[0] >= port + 12, "above the held and the taken port"
    assert worker.node[0] >= max(head.node + head.metrics) + 1 and worker.node[0] >= port + 20
    assert len(head.metrics) == 2 and worker.metrics == [], "the head's metrics servers get ports of their own"
    assert head.workers[0] > worker_base + 500 and head.workers[1] - head.workers[0] == 999, "above the held one"
    assert worker.workers[0] > head.workers[1] and worker.workers[1] - worker.workers[0] == 999
    assert lc.node_env(head) == {"AUTOSCALER_METRIC_PORT": str(head.metrics[0]),
                                 "DASHBOARD_METRIC_PORT": str(head.metrics[1])}
    assert lc.node_env(worker) == {}


def test_no_free_port_is_an_error():
    with pytest.raises(lc.ClusterError, match="no free port from 65535 up"):
        lc.free_port_from(65535, [range(65535, 65536)])
    with pytest.raises(lc.ClusterError, match="no 1000 consecutive free ports from 64600 up"):
        lc.free_range_from(64600, 1000, [range(65000, 65001)])


def test_node_command_lines(tmp_path):
    options = lc.Options(workers=1, cpus=3, gpus_per_worker=1, port=7000, dashboard_port=7005)
    ports = lc.NodePorts([7010, 7011, 7012, 7013, 7014, 7015], (20000, 20999), [7016, 7017])
    head = lc.node_command(0, ports, options, tmp_path)
    assert head[:3] == ["ray", "start", "--block"] and "--head" in head
    assert head[head.index("--temp-dir") + 1] == f"{tmp_path}/ray"
    assert head[head.index("--dashboard-host") + 1] == "127.0.0.1"
    worker = lc.node_command(1, lc.NodePorts(ports.node, ports.workers), options, tmp_path)
    assert worker[worker.index("--address") + 1] == "127.0.0.1:7000"
    assert worker[worker.index("--num-cpus") + 1] == "3" and worker[worker.index("--num-gpus") + 1] == "1"


# --- waiting for a node ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("script, outcome", [
    ("echo 'Ray runtime started.'; sleep 30", ""),
    ("echo 'E1207 grpc: UNKNOWN:Address already in use {errno:98}'; sleep 30", "bind"),
    ("echo 'ray start: something else went wrong'; exit 1", "failed"),
    ("sleep 30", "failed"),
])
def test_wait_node_tells_started_from_a_bind_failure_from_any_other(tmp_path, script, outcome):
    # A stand-in for `ray start` (the outcomes with Ray are in the tests below): its log is all wait_node reads.
    pid = lc.launch_node(["sh", "-c", script], dict(os.environ), tmp_path / "worker-1.log")
    try:
        began = time.monotonic()
        assert lc.wait_node(tmp_path, "worker-1", pid, 0, timeout=3) == outcome
        assert time.monotonic() - began < 10
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- with Ray -------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_node_whose_port_is_taken_starts_again_on_other_ports(monkeypatch, capsys):
    # The race the retry is for: a port free when chosen, taken before the raylet binds it. The first pick hands
    # out a node-manager port another program holds (as if it took it meanwhile); the raylet dies on it.
    state = Path(tempfile.mkdtemp(prefix="dslc-"))
    port, dashboard, worker_base = cluster_ports()
    options = lc.Options(workers=1, object_store_memory=80_000_000, port=port, dashboard_port=dashboard,
                         worker_port_base=worker_base)
    monkeypatch.setenv("DIFFSEG_CLUSTER_DIR", str(state))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    squatter = held()
    taken_port = squatter.getsockname()[1]
    picks: list[lc.NodePorts] = []

    def pick(index: int, options: lc.Options, taken: list[range]) -> lc.NodePorts:
        ports = lc.pick_node_ports(index, options, taken)
        if not picks:
            ports.node[0] = taken_port
        picks.append(ports)
        return ports

    (state / "pids").write_text("")
    env, _ = lc.cluster_env(state)
    try:
        ports = lc.start_node(0, options, state, env, [range(port, port + 2)], pick=pick)
        assert len(lc.recorded_pids(state)) == 1, "the failed node is forgotten"
        assert lc.session_members(lc.recorded_pids(state)[0], state)
    finally:
        squatter.close()
        stopped = lc.stop_nodes(state)
        logs = sorted(path.name for path in state.glob("*.log"))
        shutil.rmtree(state, ignore_errors=True)
    err = capsys.readouterr().err
    assert "local-cluster: head failed on a port or socket in use (attempt 1 of 3;" in err, err
    assert "starting it again on other ports" in err
    assert logs == ["head.failed-1.log", "head.log"]
    assert len(picks) == 2 and ports is picks[1] and ports.node[0] != taken_port, "picked again"
    assert stopped == 1


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
    # Another Ray head on the machine, as the test suite keeps one: its autoscaler and dashboard hold Ray's fixed
    # metrics ports (44217, 44227) unless some other Ray does already; the script's head must use others.
    other = Path(tempfile.mkdtemp(prefix="dslo-"))
    other_head, _, _ = start_ray_head(other / "ray", cpus=0, memory_gib=0.5, object_store_mb=80, dashboard=True)
    recorded: list[int] = []
    try:
        assert not lc.port_free(44217) and not lc.port_free(44227)
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
        stop_process(other_head)
        shutil.rmtree(other, ignore_errors=True)
    assert stop.returncode == 0, stop.stderr
    assert not left, f"still running after stop: {left}"
    print(f"stopped at {time.monotonic() - started:.1f} s")
