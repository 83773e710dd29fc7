"""Real services for tests, on loopback: a moto S3 server and Ray clusters started with `ray start --block`.

Every test node declares all its resources: CPUs, GPUs (0 unless a test asks: on a GPU host Ray would otherwise
detect the GPUs, and jobs meant for CPU actors would ask for them) and memory (Ray's `memory` resource, what
actors reserve; otherwise the node's free memory, which differs from machine to machine and run to run).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

BIN = Path(sys.executable).parent
GIB = 2**30


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with status {process.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not up after {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 5) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout` s (a `ray start --block` head drains for up
    to 30 s on SIGTERM; tests have nothing to drain)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """A moto S3 server on 127.0.0.1; returns the process and its endpoint URL."""
    port = free_port()
    process = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(endpoint + "/moto-api/").status == 200, 30, "moto server", process)
    except BaseException:
        stop(process)
        raise
    return process, endpoint


def resources(cpus: int, memory_gib: float, object_store_mb: int, gpus: int) -> list[str]:
    """The `ray start` flags declaring a node's resources (`--memory` is a hidden flag of `ray start`)."""
    return [f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--memory={int(memory_gib * GIB)}",
            f"--object-store-memory={object_store_mb * 2**20}"]


def start_ray_head(temp_dir: Path, cpus: int, memory_gib: float, object_store_mb: int, gpus: int = 0,
                   dashboard: bool = False, worker_ports: tuple[int, int] | None = None
                   ) -> tuple[subprocess.Popen, str, str | None]:
    """`ray start --head --block` with its own ports and temp dir, so two clusters can coexist, declaring `cpus`,
    `gpus` and `memory_gib` of memory for actors; returns the process, the GCS address and the dashboard URL
    (None without dashboard)."""
    port, dashboard_port = free_port(), free_port()
    command = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", "--port", str(port),
               *resources(cpus, memory_gib, object_store_mb, gpus), f"--temp-dir={temp_dir}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--include-dashboard={'true' if dashboard else 'false'}"]
    if dashboard:
        command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    if worker_ports:
        command += [f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}"]
    log = temp_dir.parent / f"{temp_dir.name}.log"
    # As from an activated virtual environment: `python` in a submitted job's entrypoint is this one.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                               env=env)
    address = f"127.0.0.1:{port}"
    url = f"http://127.0.0.1:{dashboard_port}" if dashboard else None
    try:
        wait_for(lambda: b"Ray runtime started" in log.read_bytes(), 120, f"ray head (log: {log})", process)
        if url:
            wait_for(lambda: _answers(url + "/api/version"), 120, "ray dashboard", process)
    except BaseException:
        stop(process)
        raise
    return process, address, url


def start_ray_worker(address: str, log: Path, cpus: int, memory_gib: float, object_store_mb: int,
                     gpus: int = 0) -> subprocess.Popen:
    """Another node of the cluster at `address` on this machine (`ray start --address --block`), with ports of
    its own and the resources given (as `start_ray_head`); returns its process, whose group holds the node's
    raylet and workers (kill it to lose the node)."""
    ports = {flag: free_port() for flag in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                                            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--runtime-env-agent-port")}
    command = [str(BIN / "ray"), "start", "--address", address, "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", *resources(cpus, memory_gib, object_store_mb, gpus),
               *(f"{flag}={port}" for flag, port in ports.items())]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"Ray runtime started" in log.read_bytes(), 120, f"ray worker node (log: {log})", process)
    except BaseException:
        stop(process)
        raise
    return process


def kill_node(process: subprocess.Popen) -> None:
    """SIGKILL a node started by `start_ray_worker` and everything it runs, as a machine that dies: its raylet
    and agents (the process group) and its actors (their own groups, in the node's session)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == process.pid:  # the session id, after the state, ppid and pgrp fields
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    process.wait()


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (401 included: the dashboard wants the Ray auth token)."""
    try:
        urllib.request.urlopen(url)
    except urllib.error.HTTPError:
        pass
    return True
