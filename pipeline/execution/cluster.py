"""Joining a Ray cluster, or starting a private local one, for any job."""

from __future__ import annotations

import os
import re
import socket

import ray

CONNECT_TIMEOUT = 10.0
"""Seconds a Ray cluster's address may take to accept a connection."""


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or `RAY_ADDRESS`, as under `ray job submit`; "auto" finds a running
    local one), else start a private local one that ends with this process.

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
        # "local" always starts a fresh instance; joining whatever cluster a previous session left recorded
        # in /tmp/ray hangs when that cluster is gone.
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")


def disconnect() -> None:
    """Leave the Ray cluster (stopping a private one). Ray forwards the actors' output to this process until
    then, so whatever is printed after it comes after every forwarded line."""
    ray.shutdown()


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
