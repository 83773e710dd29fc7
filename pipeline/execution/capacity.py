"""What a Ray cluster can host: a job's actors fitted to the cluster's nodes, before any is started.

Ray places an actor only on one node that has all it asks for at once (CPUs, GPUs, memory), and an actor that
fits nowhere waits forever without saying so. So the job counts, per node, how many of its actors fit, and
refuses at once with the numbers (or, on an autoscaling cluster, waits a bounded time for new nodes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

GIB = 2**30
PLACEMENT_TIMEOUT = 60.0
"""Seconds actors may take to be placed when the cluster had room for them as the job started (no
`--startup-timeout`): if other work took the room meanwhile, the job says so instead of waiting forever."""
ACTOR_MEMORY = {"tiny": 2 * GIB, "cpu": 6 * GIB, "gpu": 4 * GIB}
"""Host memory (bytes) an actor reserves when `--memory-per-actor` is not given: a tiny-model actor (`TINY_MODELS`)
peaked at 984 MiB on samples/ and at 1.49 GiB on 12-megapixel photos; a full-size SD 1.x replica on CPU peaked at
4.35 GiB RSS (fp32, 512 px, benchmarks/README.md), and a GPU replica keeps its weights on the device but loads them
through host memory first. SDXL-family models need more (see docs/sizing.md): their users pass
`--memory-per-actor`."""
TINY_MODELS = ("tiny", "tiny-xl")

GPU_ACTOR_CPUS = 2.0
"""CPUs of a GPU actor on a cluster that has no GPU node to take the shape from (the job is then refused or waits
for an autoscaler, and this is the request it names)."""


class JobError(RuntimeError):
    """The job cannot start; the message says why in one line."""


@dataclass(frozen=True)
class Node:
    """One alive node's resources, as Ray schedules them."""

    name: str
    """The node's address (or id), to name it in messages."""
    cpus: float
    gpus: float
    memory: float
    """Bytes of Ray's `memory` resource (what actors can reserve)."""

    @classmethod
    def from_ray(cls, node: dict[str, Any]) -> Node:
        """From one entry of `ray.nodes()`."""
        resources = node.get("Resources", {})
        return cls(str(node.get("NodeManagerAddress") or node.get("NodeID", "?")), float(resources.get("CPU", 0)),
                   float(resources.get("GPU", 0)), float(resources.get("memory", 0)))


@dataclass(frozen=True)
class ActorShape:
    """What each actor asks Ray for."""

    cpus: float
    gpus: float
    memory: float
    """Bytes; 0 reserves none."""

    def per_node(self, cpus: float, gpus: float, memory: float) -> int:
        """How many such actors fit in these amounts."""
        limits = [cpus / self.cpus if self.cpus else math.inf, gpus / self.gpus if self.gpus else math.inf,
                  memory / self.memory if self.memory else math.inf]
        fit = min(limits)
        return 0 if fit == math.inf else int(fit + 1e-9)

    def describe(self) -> str:
        return f"{self.cpus:g} CPU(s), {self.gpus:g} GPU(s) and {_gib(self.memory)} memory"


@dataclass(frozen=True)
class Actors:
    """The actor pool a job gets: how many, and each one's shape."""

    count: int
    shape: ActorShape


def actor_shape(nodes: list[Node], model: str, gpus_per_actor: float | None = None,
                cpus_per_actor: float | None = None, memory_per_actor: float | None = None) -> ActorShape:
    """Each actor's request: the flags given, else the defaults.

    GPUs: 1 when any node has a GPU, else 0 (CPU actors). CPUs: for GPU actors, their share of the CPUs of the GPU
    node with the fewest CPUs per GPU (decoding, statistics and PNG encoding keep a GPU busy only with the cores
    that come with it); for CPU actors the CPUs of the smallest node that has any (one actor uses a whole node's
    cores). Memory: `ACTOR_MEMORY`.
    """
    gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if any(n.gpus for n in nodes) else 0.0)
    if cpus_per_actor is not None:
        cpus = cpus_per_actor
    elif gpus:
        per_gpu = min((n.cpus / n.gpus for n in nodes if n.gpus), default=GPU_ACTOR_CPUS / gpus)
        cpus = max(1.0, math.floor(per_gpu * gpus))
    else:
        cpus = max(1.0, min((n.cpus for n in nodes if n.cpus), default=1.0))
    if memory_per_actor is None:
        memory_per_actor = ACTOR_MEMORY["tiny" if model in TINY_MODELS else "gpu" if gpus else "cpu"]
    return ActorShape(cpus, gpus, memory_per_actor)


def hostable(shape: ActorShape, nodes: list[Node], available: dict[str, float]) -> int:
    """How many actors of `shape` the cluster can host now: the sum over nodes of what fits in each (an actor
    never spans nodes), capped by what is free in the whole cluster (`ray.available_resources()`)."""
    on_nodes = sum(shape.per_node(n.cpus, n.gpus, n.memory) for n in nodes)
    free = shape.per_node(available.get("CPU", 0.0), available.get("GPU", 0.0), available.get("memory", 0.0))
    return min(on_nodes, free)


def fit(shape: ActorShape, nodes: list[Node], available: dict[str, float], wanted: int | None, shards: int,
        autoscaling: bool) -> Actors:
    """The actors to start for `shards` shards: `wanted` (`--num-actors`) or, by default, as many as the cluster
    hosts now; never more than there are shards.

    Raises:
        JobError: naming the numbers and the fix, when the actors do not fit now and the cluster is not
            `autoscaling` (`--startup-timeout` given: new nodes may come, and the driver waits for them).
    """
    now = hostable(shape, nodes, available)
    count = wanted or now or 1
    if count > now and not autoscaling:
        asked = f"--num-actors {wanted}: " if wanted else ""
        raise JobError(f"{asked}the cluster can host {now} actor(s) of {shape.describe()} now "
                       f"({cluster_summary(nodes, available)}); try {_fix(shape, nodes, available, now, count)}, or "
                       "--startup-timeout to let an autoscaler add nodes")
    return Actors(min(count, shards), shape)


def cluster_summary(nodes: list[Node], available: dict[str, float]) -> str:
    """One clause: each node's resources and what is free in the whole cluster."""
    listed = "; ".join(f"node {n.name}: {n.cpus:g} CPU, {n.gpus:g} GPU, {_gib(n.memory)}" for n in nodes[:8])
    more = f"; and {len(nodes) - 8} more node(s)" if len(nodes) > 8 else ""
    free = (f"free: {available.get('CPU', 0):g} CPU, {available.get('GPU', 0):g} GPU, "
            f"{_gib(available.get('memory', 0))}")
    return f"{listed or 'no node'}{more}; {free}"


def _fix(shape: ActorShape, nodes: list[Node], available: dict[str, float], now: int, wanted: int) -> str:
    """What the user can change: fewer actors (`now` fit), or a smaller request of each resource that falls
    short."""
    fixes = [f"--num-actors {now}"] if now else []
    for flag, resource in (("--gpus-per-actor", "gpus"), ("--cpus-per-actor", "cpus"),
                           ("--memory-per-actor", "memory")):
        alone = replace(ActorShape(0.0, 0.0, 0.0), **{resource: getattr(shape, resource)})
        if getattr(shape, resource) and hostable(alone, nodes, available) < wanted:
            no_gpus = resource == "gpus" and not any(n.gpus for n in nodes)
            fixes.append(f"{flag} 0 (CPU actors)" if no_gpus else f"a smaller {flag}")
    return ", ".join(fixes)


def _gib(amount: float) -> str:
    return f"{amount / GIB:.3g} GiB"
