#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine, for development: a head node plus N worker nodes, each
# its own raylet with its own object store and ports, all addressed on 127.0.0.1. It exercises what a
# single `ray.init()` does not: actors spread over nodes, objects moving between object stores, a node
# going away (kill one worker's process group) while a job runs.
#
#   infra/local-cluster.sh start [--workers N] [--cpus C] [--gpus-per-worker G] [--object-store-memory BYTES]
#                                [--port P] [--dashboard-port D] [--worker-port-base W] [--dry-run]
#   infra/local-cluster.sh status
#   infra/local-cluster.sh stop            # stops the nodes this script started (and nothing else)
#   infra/local-cluster.sh stop --all      # `ray stop --force`: every Ray process of yours on this machine
#
# Run it with the project's virtual environment active (or RAY=.venv/bin/ray): it uses the `ray` on PATH.
#
# Every node is a `ray start --block` process in a session of its own, recorded in $DIFFSEG_CLUSTER_DIR
# (default /tmp/diffseg-cluster-$UID), so `stop` ends exactly those process groups; `ray stop` would also end
# any other Ray on the machine (another checkout's cluster, the test suite's). All nodes share one Ray temp
# dir under that folder (not /tmp/ray), so this cluster never mixes with a `ray.init()` elsewhere.
#
# Ports (each node needs its own, they share one IP): the GCS on P (default 6390, not 6379, to stay clear of
# a default `ray start --head`), the Ray client server on P+1, the dashboard and job API on D (default 8265);
# these three are fixed, and `start` refuses to run when one is taken. Every other port is chosen when its
# node starts, from ports a bind test finds free at that moment and not given to another node: node i
# (0 = head) asks for P+10+10i .. P+15+10i for its node manager, object manager, dashboard agent (http, grpc),
# metrics and runtime-env agent, and gets the next free port above any of those that is taken; its workers
# get 1000 consecutive free ports from W+1000i up (W default 20000). `--dry-run` shows the ports chosen now.
# (A few head processes, the dashboard's and the autoscaler monitor's, still listen on ports the kernel picks.)
#
# Nodes start one after another, each once the one before has registered with the GCS: nodes sharing a temp
# dir that start together race for the names Ray numbers in its session folder (sockets/plasma_store.N,
# sockets/raylet.N, logs/raylet.N.out), and the loser's raylet dies on "bind: Address already in use". A node
# that fails on a bind error all the same (a port taken between the check and the bind) is started once more,
# on ports chosen again.
#
# The head declares no CPUs or GPUs (as on the clusters in infra/kuberay and infra/cluster-aws.yaml): tasks
# and actors run on the worker nodes, each with --cpus C (default 2) and --gpus-per-worker G (default 0).
#
# Binding: every node gets --node-ip-address 127.0.0.1 and the dashboard (the job API, which runs code) listens
# on 127.0.0.1 only. Ray itself, though, replaces a loopback node address with the machine's reachable IP and
# its gRPC servers listen on all interfaces; token authentication (below) guards them, and on a shared
# network a firewall should keep the ports above closed.
#
# Ray >= 2.59 turns token authentication on for clusters, so every client must present the cluster's token.
# The nodes get RAY_AUTH_MODE=token and your RAY_AUTH_TOKEN if it is set; otherwise a new random token, kept
# in $DIFFSEG_CLUSTER_DIR/auth_token (mode 600). `start` prints the export line for your shell, so
# `ray job submit` and drivers (`RAY_ADDRESS=... python jobs/label.py`) agree with the cluster.
set -euo pipefail

STATE=${DIFFSEG_CLUSTER_DIR:-/tmp/diffseg-cluster-$(id -u)}
RAY=${RAY:-ray}
HOST=127.0.0.1
WORKER_PORTS=1000    # worker ports per node: every worker process and driver on a node takes one
NODE_TIMEOUT=120     # seconds a node may take to register with the GCS (a loaded machine is slow)

usage() { sed -n '7,11p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "local-cluster: $*" >&2; exit 2; }

python_for_ray() {
    # The interpreter Ray is installed in (the one next to the `ray` script), for the node-count probe.
    local bin
    bin=$(command -v "$RAY") || die "no '$RAY' on PATH: activate the project's environment (. .venv/bin/activate)"
    if [[ -x "$(dirname "$bin")/python" ]]; then echo "$(dirname "$bin")/python"; else echo python3; fi
}

any_python() {
    # For the port checks, which need no Ray (--dry-run works without it).
    if command -v "$RAY" >/dev/null 2>&1; then python_for_ray
    elif command -v python3 >/dev/null 2>&1; then echo python3
    else die "no python3 on PATH (the port checks need it)"; fi
}

free_ports() {
    # free_ports check PORT...: prints those of the PORTs in use now.
    # free_ports pick BASE WORKER_BASE TAKEN...: prints six ports, each the first free one from BASE+k up, then
    # MIN MAX of WORKER_PORTS consecutive free ports from WORKER_BASE up; TAKEN are ranges A-B (or single ports)
    # given out already, free or not. Free: a server socket can be bound to the port on every interface, as
    # Ray's servers are (a port held by any listener, on any address, or by a live connection is taken).
    "$(any_python)" - "$WORKER_PORTS" "$@" <<'EOF'
import errno
import socket
import sys

size, command, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]


def free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        try:
            # As Ray's servers bind (gRPC and aiohttp set SO_REUSEADDR): a port whose connections linger in
            # TIME_WAIT after a cluster stopped is free again, one a listener or a live connection holds is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as error:
            if family == socket.AF_INET or error.errno == errno.EADDRINUSE:
                return False
        finally:
            sock.close()
    return True


if command == "check":
    print(" ".join(port for port in args if not free(int(port))))
    sys.exit(0)

base, worker_base = int(args[0]), int(args[1])
taken = []
for spec in args[2:]:
    low, _, high = spec.partition("-")
    taken.append((int(low), int(high or low)))


def usable(port: int) -> bool:
    return not any(low <= port <= high for low, high in taken) and free(port)


ports = []
for k in range(6):
    port = base + k
    while port < 65536 and not usable(port):
        port += 1
    if port >= 65536:
        sys.exit(f"local-cluster: no free port from {base + k} up")
    ports.append(port)
    taken.append((port, port))
low = worker_base
while True:
    if low + size > 65536:
        sys.exit(f"local-cluster: no {size} consecutive free ports from {worker_base} up")
    bad = next((port for port in range(low, low + size) if not usable(port)), None)
    if bad is None:
        break
    low = bad + 1
print(*ports, low, low + size - 1)
EOF
}

alive_nodes() {
    # Alive nodes as the GCS sees them; joins as a short-lived driver (needs the auth variables exported).
    "$(python_for_ray)" - "$1" <<'EOF' 2>/dev/null
import sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for node in ray.nodes() if node["Alive"]))
EOF
}

recorded_pids() { [[ -f "$STATE/pids" ]] && cat "$STATE/pids" || true; }

session_members() {
    # The live processes of the session a recorded node leads (its session id is the recorded pid): its
    # `ray start`, GCS, raylet and agents, whose arguments name our temp dir (this guards against a recycled
    # pid), and its Ray workers, which rename themselves ray::... and run in process groups of their own.
    ps -eo pid=,sid=,args= |
        awk -v s="$1" -v dir="$STATE/ray" '$2 == s && (index($0, dir) || $3 ~ /^ray::/) { print $1 }'
}

session_alive() { [[ -n $(session_members "$1") ]]; }

kill_session() {
    local member
    for member in $(session_members "$1"); do kill -KILL "$member" 2>/dev/null || true; done
}

pick_node_ports() {
    # NODE_PORTS: ports free now for node $1, none of them in TAKEN: six node ports, the worker port range.
    # Fails (the reason on stderr) when there are none.
    NODE_PORTS=$(free_ports pick "$((port + 10 + 10 * $1))" "$((worker_base + WORKER_PORTS * $1))" "${TAKEN[@]}")
}

take_node_ports() {
    # Later nodes must not get node $1's ports, even while nothing listens on them (--dry-run, a failed start).
    local -a p
    read -r -a p <<<"$NODE_PORTS"
    TAKEN+=("${p[@]:0:6}" "${p[6]}-${p[7]}")
}

node_args() {
    # NODE_ARGS: the `ray start` arguments of node $1 (0 = head) on the ports in NODE_PORTS; reads start's options.
    local i=$1
    local -a p
    read -r -a p <<<"$NODE_PORTS"
    NODE_ARGS=(start --block --disable-usage-stats --node-ip-address "$HOST" --temp-dir "$STATE/ray"
               --object-store-memory "$store"
               --node-manager-port "${p[0]}" --object-manager-port "${p[1]}"
               --dashboard-agent-listen-port "${p[2]}" --dashboard-agent-grpc-port "${p[3]}"
               --metrics-export-port "${p[4]}" --runtime-env-agent-port "${p[5]}"
               --min-worker-port "${p[6]}" --max-worker-port "${p[7]}")
    if ((i == 0)); then
        # The head runs the GCS, the dashboard (job API), the job drivers: no CPUs or GPUs for tasks and actors,
        # so the work lands on the worker nodes (as on the KubeRay and cluster-launcher clusters in infra/).
        NODE_ARGS+=(--head --port "$port" --ray-client-server-port "$((port + 1))" --num-cpus 0 --num-gpus 0
                    --include-dashboard true --dashboard-host "$HOST" --dashboard-port "$dashboard")
    else
        # Every node would detect all of the machine's GPUs: each worker declares its share instead.
        NODE_ARGS+=(--address "$HOST:$port" --num-cpus "$cpus" --num-gpus "$gpus")
    fi
}

bind_errors() {
    # How many lines of node $1's log and of the Ray session's logs say a port or socket was taken.
    local logs
    logs=$(readlink -f "$STATE/ray/session_latest" 2>/dev/null)/logs
    { [[ ! -f $STATE/$1.log ]] || echo "$STATE/$1.log"; [[ ! -d $logs ]] || find "$logs" -maxdepth 1 -type f; } |
        { xargs -r -d '\n' grep -hiE "address already in use|errno 98" 2>/dev/null || true; } | wc -l
}

wait_node() {
    # Waits for node $1 (log $STATE/$1.log, session $2) to register with the GCS: `ray start` prints "Ray
    # runtime started" once the GCS knows the node. NODE_FAILED: "" when it did, "bind" when it failed on a port
    # or socket in use (more lines about one in the logs than the $3 of before), else "failed": `ray start`
    # exited, or the node's raylet died (`ray start` itself waits 30 s more), or NODE_TIMEOUT went by.
    local name=$1 pid=$2 errors_before=$3 seen_raylet=0 waited=0
    NODE_FAILED=
    until grep -q "Ray runtime started" "$STATE/$name.log" 2>/dev/null; do
        if (($(bind_errors "$name") > errors_before)); then
            NODE_FAILED=bind
        elif ! kill -0 "$pid" 2>/dev/null; then
            NODE_FAILED=failed
        elif ps -eo sid=,comm= | awk -v s="$pid" '$1 == s && $2 == "raylet" { found = 1 } END { exit !found }'; then
            seen_raylet=1
        elif ((seen_raylet)); then
            NODE_FAILED=failed
        fi
        ((waited++ < 2 * NODE_TIMEOUT)) || NODE_FAILED=failed
        if [[ -n $NODE_FAILED ]]; then
            sleep 1   # for the last words of what failed to reach the logs
            (($(bind_errors "$name") > errors_before)) && NODE_FAILED=bind
            return 0
        fi
        sleep 0.5
    done
}

start() {
    local workers=2 cpus=2 gpus=0 store=500000000 port=6390 dashboard=8265 worker_base=20000 dry_run=0
    while (($#)); do
        case $1 in
            --workers) workers=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --cpus) cpus=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --gpus-per-worker) gpus=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --object-store-memory) store=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --port) port=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --dashboard-port) dashboard=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --worker-port-base) worker_base=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
            --dry-run) dry_run=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
    done
    local value
    for value in "$workers" "$cpus" "$gpus" "$store" "$port" "$dashboard" "$worker_base"; do
        [[ $value =~ ^[0-9]+$ ]] || die "options take whole numbers, got '$value'"
    done
    ((workers >= 1)) || die "--workers: at least 1 (the head runs no tasks)"
    ((port >= 1024 && dashboard >= 1024 && worker_base >= 1024)) || die "ports below 1024 are the system's"
    ((port + 15 + 10 * workers < 65536 && dashboard < 65536 &&
      worker_base + WORKER_PORTS * (workers + 1) <= 65536)) || die "ports out of range"
    ((dashboard != port && dashboard != port + 1)) || die "--dashboard-port: taken by --port P (the GCS) or P+1"

    # The fixed ports: what users and drivers connect to. TAKEN: the ports given out so far.
    local address=$HOST:$port i busy
    TAKEN=("$port-$((port + 1))" "$dashboard")
    busy=$(free_ports check "$port" "$((port + 1))" "$dashboard") || die "cannot check ports"
    if [[ -n $busy ]]; then
        local what="port(s) $busy in use (GCS --port $port, Ray client server $((port + 1)), --dashboard-port $dashboard)"
        ((dry_run)) || die "$what: choose others, or stop what holds them"
        echo "local-cluster: $what: start would refuse to run" >&2
    fi
    if ((dry_run)); then
        for ((i = 0; i <= workers; i++)); do
            pick_node_ports "$i" || exit 2
            take_node_ports
            node_args "$i"
            printf '%q ' "$RAY" "${NODE_ARGS[@]}"
            echo
        done
        return 0
    fi

    python_for_ray >/dev/null   # dies here when there is no `ray`
    # Ray's Unix sockets live in $STATE/ray/session_<date>_<time>_<micros>_<pid>/sockets/plasma_store.<n>, and such a
    # path may not exceed 107 bytes: about 71 of them are Ray's.
    ((${#STATE} <= 36)) || die "$STATE: too long a path for Ray's sockets under it; set DIFFSEG_CLUSTER_DIR to one of at most 36 characters (for example \$(mktemp -d))"
    local pid
    for pid in $(recorded_pids); do
        session_alive "$pid" && die "a cluster started from $STATE is running (pid $pid): infra/local-cluster.sh stop"
    done
    mkdir -p "$STATE" && chmod 700 "$STATE"
    rm -f "$STATE"/*.log
    : >"$STATE/pids"

    # The nodes join the cluster named on their command line, never one named in the caller's environment.
    unset RAY_ADDRESS
    # No draining on SIGTERM (`stop`): it would hold each node up to 30 s, and nothing here needs it.
    export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
    local export_line
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        rm -f "$STATE/auth_token"
        export_line="export RAY_AUTH_MODE=token   # with the RAY_AUTH_TOKEN already in your environment"
    else
        (umask 077 && "$(python_for_ray)" -c 'import secrets; print(secrets.token_hex(32))' >"$STATE/auth_token")
        RAY_AUTH_TOKEN=$(cat "$STATE/auth_token")
        export RAY_AUTH_TOKEN
        export_line="export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\"\$(cat $STATE/auth_token)\""
    fi

    # One node after another (see the top of this file), each on ports checked free just before it starts.
    local name attempt errors
    for ((i = 0; i <= workers; i++)); do
        name=worker-$i
        ((i == 0)) && name=head
        ((i == 0)) && rm -f "$STATE/ray/session_latest"   # an earlier run's; the head links its own session
        for attempt in 1 2; do
            pick_node_ports "$i" || { stop >/dev/null; exit 1; }
            node_args "$i"
            errors=$(bind_errors "$name")
            # setsid: a session and process group of its own, whose id is the pid recorded for `stop`.
            setsid "$RAY" "${NODE_ARGS[@]}" >"$STATE/$name.log" 2>&1 </dev/null &
            pid=$!
            disown "$pid"   # `stop` ends it, not this shell
            echo "$pid" >>"$STATE/pids"
            wait_node "$name" "$pid" "$errors"
            [[ -z $NODE_FAILED ]] && break
            # Failed: end what is left of the node and forget it (`status` counts the recorded nodes).
            kill_session "$pid"
            for _ in $(seq 20); do session_alive "$pid" || break; sleep 0.25; done   # its ports are free once it is gone
            sed -i "/^$pid\$/d" "$STATE/pids"
            if ((attempt == 1)) && [[ $NODE_FAILED == bind ]]; then
                mv -f "$STATE/$name.log" "$STATE/$name.failed.log"
                echo "local-cluster: $name failed on a port or socket in use (log: $STATE/$name.failed.log," \
                     "Ray's: $STATE/ray/session_latest/logs); starting it again" >&2
                continue
            fi
            tail -n 20 "$STATE/$name.log" >&2
            echo "local-cluster: $name did not start (log: $STATE/$name.log; Ray's: $STATE/ray/session_latest/logs)" >&2
            stop >/dev/null
            exit 1
        done
        take_node_ports
    done

    local nodes=0 tries=0
    while ((tries++ < 30)); do
        nodes=$(alive_nodes "$address" || echo 0)
        ((nodes == workers + 1)) && break
        sleep 2
    done
    if ((nodes != workers + 1)); then
        echo "local-cluster: $nodes of $((workers + 1)) nodes joined; logs in $STATE/*.log" >&2
        stop >/dev/null
        exit 1
    fi

    cat <<EOF
Ray cluster on $HOST: a head (no CPUs for tasks) + $workers worker node(s) with $cpus CPU(s) each; logs in $STATE/*.log
In your shell:
  $export_line
  export RAY_ADDRESS=$address
Label on it (a driver joins the cluster named by RAY_ADDRESS; one actor per worker node by default):
  python jobs/label.py --input samples --output out/local-cluster --model tiny
or submit it as a job (the working directory is uploaded; the driver runs on the head):
  ray job submit --address http://$HOST:$dashboard --working-dir . -- python jobs/label.py --input samples --output out/local-cluster-job --model tiny
Dashboard: http://$HOST:$dashboard   Stop: infra/local-cluster.sh stop
EOF
}

stop() {
    if [[ ${1:-} == --all ]]; then
        "$RAY" stop --force
        rm -f "$STATE/pids" "$STATE/auth_token"
        return 0
    fi
    local -a pids
    mapfile -t pids < <(recorded_pids)
    local pid waited=0 left
    # `ray start --block` ends its node's processes on SIGTERM (at once: `start` turned its draining off); what
    # is left of a node's session after 10 s is killed (a re-run of a job resumes it).
    for pid in "${pids[@]}"; do session_alive "$pid" && kill -TERM -- "-$pid" 2>/dev/null || true; done
    for waited in $(seq 40) kill $(seq 20); do
        left=0
        for pid in "${pids[@]}"; do session_alive "$pid" && left=1; done
        ((left)) || break
        if [[ $waited == kill ]]; then
            for pid in "${pids[@]}"; do kill_session "$pid"; done
        fi
        sleep 0.25
    done
    if ((left)); then
        echo "local-cluster: processes of the nodes in $STATE/pids are still there" >&2
        return 1
    fi
    rm -f "$STATE/pids" "$STATE/auth_token"
    echo "local-cluster: stopped ${#pids[@]} node(s) started from $STATE"
}

status() {
    local pid running=0 total=0
    for pid in $(recorded_pids); do
        ((total++)) || true
        session_alive "$pid" && ((running++)) || true
    done
    echo "local-cluster: $running of $total recorded node process(es) running (state in $STATE)"
    ((running > 0))
}

case ${1:-} in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    status) status ;;
    -h|--help|"") usage ;;
    *) die "unknown command $1 (start, status, stop)" ;;
esac
