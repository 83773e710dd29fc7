"""Joining a Ray cluster, or starting a private local one, for any job."""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys

import ray
from ray._raylet import Config

CONNECT_TIMEOUT = 10.0
"""Seconds a Ray cluster's address may take to accept a connection."""


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or `RAY_ADDRESS`, as under `ray job submit`; "auto" finds a running
    local one), else start a private local one that ends with this process. Then say on stderr, in one line,
    which cluster the job runs on (`describe_cluster`): "auto" may join any Ray instance on the machine.

    Raises:
        ConnectionError: nothing answers at a `HOST:PORT` address (Ray itself would retry for minutes).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        ray.init(address=address, logging_level="WARNING")
    else:
        _private_token_auth()
        # "local" always starts a fresh instance; joining whatever cluster a previous session left recorded
        # in /tmp/ray hangs when that cluster is gone.
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    print(describe_cluster(address), file=sys.stderr, flush=True)


def disconnect() -> None:
    """Leave the Ray cluster (stopping a private one). Ray forwards the actors' output to this process until
    then, so whatever is printed after it comes after every forwarded line."""
    ray.shutdown()


def describe_cluster(address: str | None) -> str:
    """The connected cluster in one line: where (`address` as given, with the head it resolved to for "auto",
    or a private local Ray), its live nodes, and the CPUs and GPUs free of all."""
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    total, free = ray.cluster_resources(), ray.available_resources()
    if not address:
        where = "a private local Ray (ends with this job)"
    elif address == "auto":
        where = f"the Ray cluster at {ray.get_runtime_context().gcs_address} (found by address auto)"
    else:
        where = f"the Ray cluster at {address}"
    return (f"Ray: {where}; {nodes} node(s), {_free(free, total, 'CPU')} CPU(s) and {_free(free, total, 'GPU')} "
            "GPU(s) free")


def _free(free: dict[str, float], total: dict[str, float], resource: str) -> str:
    return f"{free.get(resource, 0):g} of {total.get(resource, 0):g}"


def _private_token_auth() -> None:
    """Token authentication for the private Ray about to start, with a token of its own, unless the user chose
    a mode (`RAY_AUTH_MODE`): Ray turns token auth on for every cluster it starts and warns so on each start
    when the mode is unset, and writes a token to ~/.ray/auth_token when none is set. The variables reach every
    process of the private Ray, which starts from this one's environment."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # This process read its Ray settings at import, before the mode was set: re-read them, as Ray does when it
    # turns token auth on itself (ray._private.authentication.authentication_token_setup._enable_token_auth).
    Config.initialize("")


def _check_reachable(address: str) -> None:
    """Fail fast when a `[ray://]HOST:PORT` address refuses connections or does not answer in `CONNECT_TIMEOUT`."""
    found = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address)
    if not found:
        return
    try:
        socket.create_connection((found[1], int(found[2])), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        raise ConnectionError(f"cannot reach the Ray cluster at {address} ({error.strerror or error}); check "
                              "--address or RAY_ADDRESS") from None
