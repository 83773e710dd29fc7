#!/usr/bin/env python3
"""A multi-node Ray cluster on this one machine, for development: a head node plus N worker nodes, each its own
raylet with its own object store and ports, all addressed on 127.0.0.1. It exercises what a single `ray.init()`
does not: actors spread over nodes, objects moving between object stores, a node going away (kill one worker's
process group) while a job runs.

  infra/local-cluster.sh start [--workers N] [--cpus C] [--gpus-per-worker G] [--object-store-memory BYTES]
                               [--port P] [--dashboard-port D] [--worker-port-base W] [--dry-run]
  infra/local-cluster.sh status
  infra/local-cluster.sh stop            # stops the nodes this script started (and nothing else)
  infra/local-cluster.sh stop --all      # `ray stop --force`: every Ray process of yours on this machine

(`python infra/local_cluster.py ...` is the same.) Run it with the project's virtual environment active (or
RAY=.venv/bin/ray): it uses the `ray` on PATH. Only the standard library is imported here, so `--dry-run` works
without Ray.

Every node is a `ray start --block` process in a session of its own, recorded in $DIFFSEG_CLUSTER_DIR (default
/tmp/diffseg-cluster-$UID), so `stop` ends exactly those sessions; `ray stop` would also end any other Ray on the
machine (another checkout's cluster, the test suite's). All nodes share one Ray temp dir under that folder (not
/tmp/ray), so this cluster never mixes with a `ray.init()` elsewhere.

Ports (each node needs its own, they share one IP): the GCS on P (default 6390, not 6379, to stay clear of a
default `ray start --head`), the Ray client server on P+1, the dashboard and job API on D (default 8265); these
three are fixed, and `start` refuses to run when one is taken. Every other port is chosen when its node starts,
from ports a bind test finds free at that moment and not given to another node: node i (0 = head) asks for
P+10+10i .. P+15+10i for its node manager, object manager, dashboard agent (http, grpc), metrics and runtime-env
agent, the head also P+16 and P+17 for the autoscaler's and the dashboard's metrics servers (Ray's fixed defaults,
44217 and 44227, are held by any other Ray head on the machine), and each gets the next free port above one that
is taken; its workers get 1000 consecutive free ports from W+1000i up (W default 20000). `--dry-run` shows the
ports chosen now.

Nodes start one after another, each once the one before has registered with the GCS: nodes sharing a temp dir
that start together race for the names Ray numbers in its session folder (sockets/plasma_store.N,
sockets/raylet.N, logs/raylet.N.out), and the loser's raylet dies on "bind: Address already in use". A node that
fails on a port or socket in use all the same (taken between the check and the bind) is started again on ports
chosen again, up to ATTEMPTS times in all.

The head declares no CPUs or GPUs (as on the clusters in infra/kuberay and infra/cluster-aws.yaml): tasks and
actors run on the worker nodes, each with --cpus C (default 2) and --gpus-per-worker G (default 0).

Binding: every node gets --node-ip-address 127.0.0.1 and the dashboard (the job API, which runs code) listens on
127.0.0.1 only. Ray itself, though, replaces a loopback node address with the machine's reachable IP and its gRPC
servers listen on all interfaces; token authentication (below) guards them, and on a shared network a firewall
should keep the ports above closed.

Ray >= 2.59 turns token authentication on for clusters, so every client must present the cluster's token. The
nodes get RAY_AUTH_MODE=token and your RAY_AUTH_TOKEN if it is set; otherwise a new random token, kept in
$DIFFSEG_CLUSTER_DIR/auth_token (mode 600). `start` prints the export line for your shell, so `ray job submit`
and drivers (`RAY_ADDRESS=... python jobs/label.py`) agree with the cluster.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
WORKER_PORTS = 1000  # worker ports per node: every worker process and driver on a node takes one
NODE_TIMEOUT = 120.0  # seconds a node may take to register with the GCS (a loaded machine is slow)
JOIN_TIMEOUT = 60.0  # seconds for the GCS to count every node alive once all have started
ATTEMPTS = 3  # starts of one node, each on ports chosen again, when it fails on a port or socket in use
STOP_GRACE = 10.0  # seconds `stop` waits after SIGTERM before it kills what is left of a node
MAX_SOCKET_DIR = 36  # Ray's socket paths under the state dir may not exceed 107 bytes: about 71 are Ray's
# Ray logs each bind failure of a gRPC server, the raylet's gRPC "Address already in use", Python's "[Errno 98]".
BIND_ERROR = re.compile(rb"address already in use|errno 98", re.IGNORECASE)
# Logs of the processes that end their node when a bind fails. The head's dashboard and autoscaler monitor
# log a metrics server that failed to bind and carry on: their lines mean nothing about the node.
FATAL_LOGS = ("raylet*", "gcs_server*", "dashboard_agent*", "runtime_env_agent*", "ray_client_server*")
# A short-lived driver that counts the alive nodes (the interpreter next to `ray` has Ray; this one may not).
ALIVE_PROBE = ("import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
               "print(sum(1 for node in ray.nodes() if node['Alive']))")


class ClusterError(Exception):
    """A one-line reason to stop, printed as `local-cluster: <reason>`; `code` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    """`start`'s options: counts, bytes (object store) and TCP port numbers."""

    workers: int = 2
    cpus: int = 2
    gpus_per_worker: int = 0
    object_store_memory: int = 500_000_000
    port: int = 6390
    dashboard_port: int = 8265
    worker_port_base: int = 20000
    dry_run: bool = False


@dataclass
class NodePorts:
    """The ports of one node besides the fixed three: six node ports, the worker port range (inclusive) and, on
    the head, the autoscaler's and the dashboard's metrics servers."""

    node: list[int]
    workers: tuple[int, int]
    metrics: list[int] = field(default_factory=list)

    def all(self) -> list[range]:
        """Every port given to the node, as ranges."""
        return [range(p, p + 1) for p in self.node + self.metrics] + [range(self.workers[0], self.workers[1] + 1)]


def state_dir() -> Path:
    """Where the cluster's pids, logs, token and Ray temp dir live."""
    return Path(os.environ.get("DIFFSEG_CLUSTER_DIR") or f"/tmp/diffseg-cluster-{os.getuid()}")


def ray_command() -> str:
    return os.environ.get("RAY") or "ray"


def usage() -> str:
    lines = (__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("infra/local-cluster.sh start"))
    return "\n".join(line[2:] for line in lines[start:start + 5])


# --- arguments ------------------------------------------------------------------------------------------------

FLAGS = {"--workers": "workers", "--cpus": "cpus", "--gpus-per-worker": "gpus_per_worker",
         "--object-store-memory": "object_store_memory", "--port": "port", "--dashboard-port": "dashboard_port",
         "--worker-port-base": "worker_port_base"}


def parse_start(args: Sequence[str]) -> Options:
    """`start`'s options from its arguments; ClusterError (exit 2) for anything unknown or out of range."""
    options = Options()
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if flag == "--dry-run":
            options.dry_run = True
            continue
        if flag not in FLAGS:
            raise ClusterError(f"unknown option {flag} (see --help)")
        value = rest.pop(0) if rest else ""
        if not value.isascii() or not value.isdigit():
            raise ClusterError(f"options take whole numbers, got '{value}'")
        setattr(options, FLAGS[flag], int(value))
    if options.workers < 1:
        raise ClusterError("--workers: at least 1 (the head runs no tasks)")
    if min(options.port, options.dashboard_port, options.worker_port_base) < 1024:
        raise ClusterError("ports below 1024 are the system's")
    if (options.port + 15 + 10 * options.workers >= 65536 or options.dashboard_port >= 65536
            or options.worker_port_base + WORKER_PORTS * (options.workers + 1) > 65536):
        raise ClusterError("ports out of range")
    if options.dashboard_port in (options.port, options.port + 1):
        raise ClusterError("--dashboard-port: taken by --port P (the GCS) or P+1")
    return options


# --- ports ----------------------------------------------------------------------------------------------------

def port_free(port: int) -> bool:
    """Whether a server could listen on TCP `port` on every interface now, as Ray's servers do: a port held by any
    listener, on any address, or by a live connection is taken; one whose connections linger in TIME_WAIT after
    a cluster stopped is free (gRPC and aiohttp set SO_REUSEADDR, and so does this check)."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as error:
                if family == socket.AF_INET or error.errno == errno.EADDRINUSE:
                    return False
    return True


def fixed_ports_in_use(options: Options) -> list[int]:
    """Those of the GCS, Ray client server and dashboard ports that are taken now."""
    return [p for p in (options.port, options.port + 1, options.dashboard_port) if not port_free(p)]


def free_port_from(base: int, taken: list[range]) -> int:
    """The first port from `base` up that is free now and in none of `taken`."""
    for port in range(base, 65536):
        if not any(port in r for r in taken) and port_free(port):
            return port
    raise ClusterError(f"no free port from {base} up")


def free_range_from(base: int, size: int, taken: list[range]) -> tuple[int, int]:
    """The first `size` consecutive ports from `base` up that are all free now and in none of `taken`; returns
    the lowest and highest."""
    low = base
    while low + size <= 65536:
        bad = next((p for p in range(low, low + size) if any(p in r for r in taken) or not port_free(p)), None)
        if bad is None:
            return low, low + size - 1
        low = bad + 1
    raise ClusterError(f"no {size} consecutive free ports from {base} up")


def pick_node_ports(index: int, options: Options, taken: list[range]) -> NodePorts:
    """Ports free now for node `index` (0 = head) and in none of `taken` (the fixed ports and those of the nodes
    before it). `taken` is not changed."""
    given = list(taken)
    base = options.port + 10 + 10 * index

    def one(offset: int) -> int:
        port = free_port_from(base + offset, given)
        given.append(range(port, port + 1))
        return port

    node = [one(k) for k in range(6)]
    metrics = [one(6), one(7)] if index == 0 else []
    workers = free_range_from(options.worker_port_base + WORKER_PORTS * index, WORKER_PORTS, given)
    return NodePorts(node, workers, metrics)


def node_command(index: int, ports: NodePorts, options: Options, state: Path) -> list[str]:
    """The `ray start` command line of node `index` (0 = head) on `ports`."""
    command = [ray_command(), "start", "--block", "--disable-usage-stats", "--node-ip-address", HOST,
               "--temp-dir", f"{state}/ray", "--object-store-memory", str(options.object_store_memory)]
    names = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
    for name, port in zip(names, ports.node):
        command += [name, str(port)]
    command += ["--min-worker-port", str(ports.workers[0]), "--max-worker-port", str(ports.workers[1])]
    if index == 0:
        # The head runs the GCS, the dashboard (job API), the job drivers: no CPUs or GPUs for tasks and actors,
        # so the work lands on the worker nodes (as on the KubeRay and cluster-launcher clusters in infra/).
        command += ["--head", "--port", str(options.port), "--ray-client-server-port", str(options.port + 1),
                    "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "true", "--dashboard-host", HOST,
                    "--dashboard-port", str(options.dashboard_port)]
    else:
        # Every node would detect all of the machine's GPUs: each worker declares its share instead.
        command += ["--address", f"{HOST}:{options.port}", "--num-cpus", str(options.cpus),
                    "--num-gpus", str(options.gpus_per_worker)]
    return command


def node_env(ports: NodePorts) -> dict[str, str]:
    """The variables that set the ports `ray start` has no flags for (the head's metrics servers)."""
    if not ports.metrics:
        return {}
    return {"AUTOSCALER_METRIC_PORT": str(ports.metrics[0]), "DASHBOARD_METRIC_PORT": str(ports.metrics[1])}


# --- processes ------------------------------------------------------------------------------------------------

def session_members(sid: int, state: Path) -> list[tuple[int, str]]:
    """(pid, command name) of the live processes of the session a recorded node leads (its session id is the
    recorded pid): its `ray start`, GCS, raylet and agents, whose arguments name our temp dir (this guards against
    a recycled pid), and its Ray workers, which rename themselves ray::... and run in process groups of their own."""
    members = []
    marker = f"{state}/ray".encode()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_bytes()
            args = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        name, _, rest = text[text.index(b"(") + 1:].rpartition(b")")
        fields = rest.split()
        if fields[0] == b"Z" or int(fields[3]) != sid:
            continue
        if marker in args or args.startswith(b"ray::"):
            members.append((int(stat.parent.name), name.decode(errors="replace")))
    return members


def kill_session(sid: int, state: Path) -> None:
    for pid, _ in session_members(sid, state):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_gone(sids: Sequence[int], state: Path, seconds: float) -> bool:
    """Waits up to `seconds` for the sessions `sids` to have no live member; whether they have none."""
    deadline = time.monotonic() + seconds
    while any(session_members(sid, state) for sid in sids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True


def recorded_pids(state: Path) -> list[int]:
    try:
        return [int(word) for word in (state / "pids").read_text().split()]
    except FileNotFoundError:
        return []


def bind_errors(state: Path, name: str) -> int:
    """How many lines of node `name`'s log and of the fatal logs of the Ray session say a port or socket was
    taken."""
    logs = [state / f"{name}.log"]
    session = (state / "ray" / "session_latest" / "logs").resolve()
    if session.is_dir():
        logs += [path for pattern in FATAL_LOGS for path in session.glob(pattern)]
    count = 0
    for path in logs:
        try:
            count += sum(1 for line in path.read_bytes().splitlines() if BIND_ERROR.search(line))
        except OSError:
            pass
    return count


# --- nodes ----------------------------------------------------------------------------------------------------

def launch_node(command: list[str], env: dict[str, str], log: Path) -> int:
    """Starts `command` in a session of its own (whose id is its pid, recorded for `stop`), output to `log`;
    returns the pid. The node outlives this process."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    return process.pid


def wait_node(state: Path, name: str, pid: int, errors_before: int, timeout: float = NODE_TIMEOUT) -> str:
    """Waits up to `timeout` seconds for node `name` (session `pid`) to register with the GCS: `ray start` prints
    "Ray runtime started" once the GCS knows the node. Returns "" when it did, "bind" when it failed on a port or
    socket in use (more such lines in its logs than `errors_before`), else "failed": `ray start` exited, or the
    node's raylet died (`ray start` itself would wait 30 s more), or the time went by."""
    log = state / f"{name}.log"
    deadline = time.monotonic() + timeout
    seen_raylet = False
    while True:
        try:
            if b"Ray runtime started" in log.read_bytes():
                return ""
        except FileNotFoundError:
            pass
        names = [member for _, member in session_members(pid, state)]
        failed = bind_errors(state, name) > errors_before
        if not failed:
            failed = (seen_raylet and "raylet" not in names) or not _running(pid) or time.monotonic() > deadline
            seen_raylet = seen_raylet or "raylet" in names
        if failed:
            time.sleep(1)  # for the last words of what failed to reach the logs
            return "bind" if bind_errors(state, name) > errors_before else "failed"
        time.sleep(0.5)


def _running(pid: int) -> bool:
    """Whether `ray start` (our child until this process exits) still runs; reaps it when it has exited."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists()
    return done == 0


def start_node(index: int, options: Options, state: Path, env: dict[str, str], taken: list[range],
               pick: Callable[[int, Options, list[range]], NodePorts] = pick_node_ports) -> NodePorts:
    """Starts node `index` (0 = head) on ports `pick` finds free, records its pid and waits for it to join; on a
    port or socket in use, ends it and starts it again on ports picked again, ATTEMPTS times in all, each failure
    reported on stderr. Returns the node's ports; ClusterError (exit 1) when it did not start (what is left of it
    ended and forgotten)."""
    name = "head" if index == 0 else f"worker-{index}"
    attempt = 1
    while True:
        ports = pick(index, options, taken)
        if index == 0:
            # An earlier head's, whose logs would count against this one; the head links its own session.
            (state / "ray" / "session_latest").unlink(missing_ok=True)
        errors = bind_errors(state, name)
        pid = launch_node(node_command(index, ports, options, state), {**env, **node_env(ports)},
                          state / f"{name}.log")
        with (state / "pids").open("a") as pids:
            pids.write(f"{pid}\n")
        outcome = wait_node(state, name, pid, errors)
        if not outcome:
            return ports
        # Its ports are free again once it is gone; `status` counts the recorded nodes.
        kill_session(pid, state)
        wait_gone([pid], state, 5)
        (state / "pids").write_text("".join(f"{p}\n" for p in recorded_pids(state) if p != pid))
        if outcome == "bind" and attempt < ATTEMPTS:
            failed_log = state / f"{name}.failed-{attempt}.log"
            (state / f"{name}.log").replace(failed_log)
            print(f"local-cluster: {name} failed on a port or socket in use (attempt {attempt} of {ATTEMPTS}; log: "
                  f"{failed_log}, Ray's: {state}/ray/session_latest/logs); starting it again on other ports",
                  file=sys.stderr)
            attempt += 1
            continue
        tail = (state / f"{name}.log").read_text(errors="replace").splitlines()[-20:]
        print("\n".join(tail), file=sys.stderr)
        why = f" on a port or socket in use, {ATTEMPTS} times" if outcome == "bind" else ""
        raise ClusterError(f"{name} did not start{why} (log: {state}/{name}.log; Ray's: "
                           f"{state}/ray/session_latest/logs)", code=1)


def alive_nodes(address: str, env: dict[str, str]) -> int:
    """The alive nodes as the GCS at `address` sees them (0 when it cannot say within 60 s)."""
    ray = shutil.which(ray_command())
    python = Path(ray).with_name("python") if ray else None
    interpreter = str(python) if python and os.access(python, os.X_OK) else "python3"
    try:
        probe = subprocess.run([interpreter, "-c", ALIVE_PROBE, address], capture_output=True, text=True, env=env,
                               timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return 0
    lines = probe.stdout.split()
    return int(lines[-1]) if probe.returncode == 0 and lines and lines[-1].isdigit() else 0


def wait_joined(address: str, env: dict[str, str], count: int, timeout: float = JOIN_TIMEOUT) -> int:
    """Waits up to `timeout` seconds for `count` nodes to be alive at `address`; returns the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = alive_nodes(address, env)
        if nodes == count or time.monotonic() > deadline:
            return nodes
        time.sleep(2)


# --- commands -------------------------------------------------------------------------------------------------

def dry_run(options: Options, state: Path) -> None:
    """Prints the `ray start` command lines with the ports free now (the head's with its metrics variables)."""
    taken = [range(options.port, options.port + 2), range(options.dashboard_port, options.dashboard_port + 1)]
    for index in range(options.workers + 1):
        ports = pick_node_ports(index, options, taken)
        taken += ports.all()
        variables = [f"{key}={value}" for key, value in node_env(ports).items()]
        print(shlex.join(variables + node_command(index, ports, options, state)))


def cluster_env(state: Path) -> tuple[dict[str, str], str]:
    """The nodes' environment and the export line for the user's shell: token auth with the caller's
    RAY_AUTH_TOKEN, or a new token kept in `state`/auth_token (mode 600)."""
    # The nodes join the cluster named on their command line, never one named in the caller's environment.
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    # No draining on SIGTERM (`stop`): it would hold each node up to 30 s, and nothing here needs it.
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=env.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S") or "0")
    token_file = state / "auth_token"
    if env.get("RAY_AUTH_TOKEN"):
        token_file.unlink(missing_ok=True)
        return env, "export RAY_AUTH_MODE=token   # with the RAY_AUTH_TOKEN already in your environment"
    token_file.unlink(missing_ok=True)
    descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        out.write(env["RAY_AUTH_TOKEN"] + "\n")
    return env, f'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(cat {token_file})"'


def start(args: Sequence[str]) -> int:
    """`start`: the fixed ports checked, then the nodes one after another, then every node seen alive."""
    options = parse_start(args)
    state = state_dir()
    busy = fixed_ports_in_use(options)
    if busy:
        what = (f"port(s) {' '.join(map(str, busy))} in use (GCS --port {options.port}, Ray client server "
                f"{options.port + 1}, --dashboard-port {options.dashboard_port})")
        if not options.dry_run:
            raise ClusterError(f"{what}: choose others, or stop what holds them")
        print(f"local-cluster: {what}: start would refuse to run", file=sys.stderr)
    if options.dry_run:
        dry_run(options, state)
        return 0
    if not shutil.which(ray_command()):
        raise ClusterError(f"no '{ray_command()}' on PATH: activate the project's environment (. .venv/bin/activate)")
    if len(str(state)) > MAX_SOCKET_DIR:
        raise ClusterError(f"{state}: too long a path for Ray's sockets under it; set DIFFSEG_CLUSTER_DIR to one of "
                           f"at most {MAX_SOCKET_DIR} characters (for example $(mktemp -d))")
    for pid in recorded_pids(state):
        if session_members(pid, state):
            raise ClusterError(f"a cluster started from {state} is running (pid {pid}): infra/local-cluster.sh stop")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    for log in state.glob("*.log"):
        log.unlink()
    (state / "pids").write_text("")
    env, export_line = cluster_env(state)

    taken = [range(options.port, options.port + 2), range(options.dashboard_port, options.dashboard_port + 1)]
    address = f"{HOST}:{options.port}"
    try:
        for index in range(options.workers + 1):
            taken += start_node(index, options, state, env, taken).all()
        nodes = wait_joined(address, env, options.workers + 1)
        if nodes != options.workers + 1:
            raise ClusterError(f"{nodes} of {options.workers + 1} nodes joined; logs in {state}/*.log", code=1)
    except BaseException:
        stop_nodes(state)
        raise
    print(f"""\
Ray cluster on {HOST}: a head (no CPUs for tasks) + {options.workers} worker node(s) with {options.cpus} CPU(s) each; \
logs in {state}/*.log
In your shell:
  {export_line}
  export RAY_ADDRESS={address}
Label on it (a driver joins the cluster named by RAY_ADDRESS; one actor per worker node by default):
  python jobs/label.py --input samples --output out/local-cluster --model tiny
or submit it as a job (the working directory is uploaded; the driver runs on the head):
  ray job submit --address http://{HOST}:{options.dashboard_port} --working-dir . -- python jobs/label.py \
--input samples --output out/local-cluster-job --model tiny
Dashboard: http://{HOST}:{options.dashboard_port}   Stop: infra/local-cluster.sh stop""")
    return 0


def stop_nodes(state: Path) -> int:
    """Ends the recorded nodes: SIGTERM to each session (`ray start --block` then ends its node at once: `start`
    turned draining off), SIGKILL to what is left after STOP_GRACE seconds (a re-run of a job resumes it).
    Returns how many nodes were recorded; ClusterError (exit 1) when some process of theirs stays."""
    pids = recorded_pids(state)
    for pid in pids:
        if session_members(pid, state):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    if not wait_gone(pids, state, STOP_GRACE):
        for pid in pids:
            kill_session(pid, state)
        if not wait_gone(pids, state, 5):
            raise ClusterError(f"processes of the nodes in {state}/pids are still there", code=1)
    for name in ("pids", "auth_token"):
        (state / name).unlink(missing_ok=True)
    return len(pids)


def stop(args: Sequence[str]) -> int:
    """`stop` (the recorded nodes) or `stop --all` (`ray stop --force`)."""
    state = state_dir()
    if list(args) == ["--all"]:
        code = subprocess.run([ray_command(), "stop", "--force"], check=False).returncode
        for name in ("pids", "auth_token"):
            (state / name).unlink(missing_ok=True)
        return code
    if args:
        raise ClusterError(f"unknown option {args[0]} (stop takes --all only)")
    print(f"local-cluster: stopped {stop_nodes(state)} node(s) started from {state}")
    return 0


def status() -> int:
    """`status`: exit 0 when some recorded node runs, 1 when none does."""
    state = state_dir()
    pids = recorded_pids(state)
    running = sum(1 for pid in pids if session_members(pid, state))
    print(f"local-cluster: {running} of {len(pids)} recorded node process(es) running (state in {state})")
    return 0 if running else 1


def main(argv: Sequence[str]) -> int:
    """The command line; errors are one line on stderr and exit status 2 (usage) or 1 (the cluster)."""
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command in ("", "-h", "--help") or (command == "start" and ("-h" in args or "--help" in args)):
            print(usage())
            return 0
        if command == "start":
            return start(args)
        if command == "stop":
            return stop(args)
        if command == "status":
            return status()
        raise ClusterError(f"unknown command {command} (start, status, stop)")
    except ClusterError as error:
        print(f"local-cluster: {error}", file=sys.stderr)
        return error.code
    except FileNotFoundError as error:  # no `ray` for `stop --all`
        print(f"local-cluster: {error.strerror}: {error.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("local-cluster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
