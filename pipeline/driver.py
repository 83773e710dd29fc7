"""The labeling job's driver: plans shards, runs a pool of `LabelWorker` Ray actors over them, and reports.

Exactly once: a shard is skipped when its `_done/` marker exists, and is otherwise (re)written whole
under the same name, so re-running after any failure finishes the remaining shards without duplicates.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from tqdm import tqdm

from diffseg import DEFAULT_MODEL, DiffSegConfig, ModelLoadError
from diffseg.preprocess import MAX_PIXELS

from .output import OutputDataset
from .sources import ParquetColumns, Shard, plan
from .storage import Location
from .worker import LabelWorker, Placement, WorkerSettings

LOST_ACTORS_TIMEOUT = 600.0
"""Seconds the job waits when every actor has been lost (their nodes gone) before it gives up the remaining
shards; a re-run finishes them."""
IN_FLIGHT_PER_ACTOR = 2
"""Shards handed to an actor at once: one being segmented, one being read or written. More would let a
slow actor hoard work; fewer would leave the model idle while a shard is uploaded."""


@dataclass(frozen=True)
class LabelJob:
    """Everything that defines a labeling run."""

    input: str
    """fsspec URL of the input: a folder of images, of WebDataset `.tar` shards, or of Parquet files."""
    output: str
    """fsspec URL of the output folder (see `pipeline.output`)."""
    model: str = DEFAULT_MODEL
    revision: str | None = None
    config: DiffSegConfig = field(default_factory=DiffSegConfig)
    input_format: str = "auto"
    """"auto", "images", "tar" or "parquet"."""
    shard_size: int = 1000
    """Images per shard for image-folder inputs."""
    columns: ParquetColumns = field(default_factory=ParquetColumns)
    num_actors: int | None = None
    """Model replicas; None: one per GPU (per `gpus_per_actor`), or one per node without GPUs."""
    gpus_per_actor: float | None = None
    """None: 1 when the cluster has GPUs, else 0 (CPU)."""
    cpus_per_actor: float | None = None
    """None: 2 for GPU actors; the CPUs of the smallest node for CPU actors."""
    batch_size: int = 1
    dtype: str | None = None
    max_pixels: int = MAX_PIXELS
    max_retries: int = 3
    """Further attempts for a shard whose attempt failed (actor died, storage error) before giving up."""
    startup_timeout: float = 0.0
    """Seconds to wait for the cluster to host the actors. 0: the cluster must have the resources now (the job
    is refused otherwise); more: an autoscaling cluster may add the nodes first (actor requests are what make
    it scale up), and the job is refused if they are not there in time."""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Summary:
    """What a run did; `to_dict()` is the job's last output line."""

    images_ok: int = 0
    images_failed: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    """Wall time of the whole run."""
    startup_seconds: float = 0.0
    """Part of `seconds` spent starting the actors and loading their model replicas."""
    output: str = ""
    run_id: str = ""
    failed: list[dict[str, str]] = field(default_factory=list)
    """`{"shard": name, "error": last error}` for each shard that failed for good."""
    in_flight_peak: int = 0
    """Most shards handed to actors at once (at most `IN_FLIGHT_PER_ACTOR` per actor): the driver's backlog
    and the object store's load stay bounded whatever the size of the input."""

    def to_dict(self) -> dict[str, Any]:
        """All fields (times rounded to ms) and `images_per_second` over the whole run."""
        images = self.images_ok + self.images_failed
        return {**asdict(self), "seconds": round(self.seconds, 3), "startup_seconds": round(self.startup_seconds, 3),
                "images_per_second": round(images / self.seconds, 3) if self.seconds else 0.0}


class JobError(RuntimeError):
    """The job cannot start; the message says why in one line."""


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at `address` (or `RAY_ADDRESS`, as under `ray job submit`; "auto" finds a running
    local one), else start a private local one that ends with this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        # "local" always starts a fresh instance; joining whatever cluster a previous session left recorded
        # in /tmp/ray hangs when that cluster is gone.
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")


@dataclass
class Plan:
    """A job resolved against its input and output: which shards exist and which are left to do."""

    job: LabelJob
    source: Location
    output: OutputDataset
    shards: list[Shard]
    todo: list[Shard]
    identity: dict[str, Any]
    """What the output's manifest must match (the model's identity is added when a replica reports it)."""
    started: float = field(default_factory=time.perf_counter)
    """When planning began (`time.perf_counter()`); the summary's `seconds` count from here."""


def prepare(job: LabelJob) -> Plan:
    """List the input and the output's finished shards; needs no Ray.

    Raises:
        InputError, StorageError: the input cannot be listed or holds nothing usable.
        OutputConflict: the output already holds masks made with other settings.
    """
    started = time.perf_counter()
    source = Location(job.input, job.storage_options)
    dataset = OutputDataset(Location(job.output, job.storage_options))
    shards = plan(source, job.input_format, job.shard_size, job.columns)
    identity = _identity(job, source, shards)
    dataset.check(identity)
    done = dataset.done()
    return Plan(job, source, dataset, shards, [shard for shard in shards if shard.name not in done], identity,
                started)


def execute(plan: Plan, progress: bool = True, worker: type[LabelWorker] = LabelWorker) -> Summary:
    """Label the plan's remaining shards on the connected Ray cluster (Ray is not touched when none are left).

    `worker` is the actor class: a `LabelWorker`, or a subclass with another model (the driver benchmark runs a
    no-op one through this same path).

    Raises:
        ModelLoadError: a replica could not load the model; nothing was written.
        JobError: the cluster cannot host the actors asked for.
        OutputConflict: the model differs from the one the output was started with.
    """
    started = plan.started
    output = plan.output.location
    summary = Summary(shards_skipped=len(plan.shards) - len(plan.todo), output=output.uri(""),
                      run_id=uuid.uuid4().hex)
    if plan.todo:
        starting = time.perf_counter()
        actors, model = _start_actors(plan.job, plan.source, output, len(plan.todo), worker)
        summary.startup_seconds = time.perf_counter() - starting
        try:
            plan.output.claim({**plan.identity, "model": model})
            _schedule(actors, plan.todo, plan.job.max_retries, summary, progress)
        finally:
            for actor in actors:
                ray.kill(actor)
    summary.seconds = time.perf_counter() - started
    return summary


def run(job: LabelJob, progress: bool = True) -> Summary:
    """`execute(prepare(job))`: label every shard of `job.input` not yet done in `job.output`."""
    return execute(prepare(job), progress)


def _identity(job: LabelJob, source: Location, shards: list[Shard]) -> dict[str, Any]:
    """What every file of an output must share; the model's identity is added once a replica reports it."""
    return {"config": job.config.to_dict(), "config_hash": job.config.config_hash(), "input": source.uri(""),
            "input_format": shards[0].format, "columns": asdict(job.columns),
            "shard_size": job.shard_size if shards[0].format == "images" else None}


def _resources(job: LabelJob, shards: int) -> tuple[int, float, float]:
    """(actors, gpus per actor, cpus per actor) from the job and the cluster."""
    total = ray.cluster_resources()
    node_cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    gpus = job.gpus_per_actor if job.gpus_per_actor is not None else (1.0 if total.get("GPU", 0) else 0.0)
    if gpus:
        cpus = job.cpus_per_actor if job.cpus_per_actor is not None else 2.0
        actors = job.num_actors or max(1, int(total.get("GPU", 0) // gpus))
    else:
        cpus = job.cpus_per_actor if job.cpus_per_actor is not None else max(1.0, min(node_cpus, default=1.0))
        actors = job.num_actors or max(1, sum(1 for c in node_cpus if c >= cpus))
    if not job.startup_timeout:
        if gpus > total.get("GPU", 0):
            raise JobError(f"--gpus-per-actor {gpus:g}: the cluster has {total.get('GPU', 0):g} GPU(s) "
                           "(an autoscaling cluster needs --startup-timeout)")
        if cpus > max(node_cpus, default=0):
            raise JobError(f"--cpus-per-actor {cpus:g}: no node has that many CPUs (largest: {max(node_cpus):g})")
    return min(actors, shards), gpus, cpus


def _start_actors(job: LabelJob, source: Location, output: Location, shards: int,
                  worker: type[LabelWorker]) -> tuple[list, dict]:
    """Start the actor pool and load a model replica in each; returns the actors and the model's identity."""
    count, gpus, cpus = _resources(job, shards)
    settings = WorkerSettings(model=job.model, config=job.config, revision=job.revision,
                              device="cuda" if gpus else "cpu", dtype=job.dtype, batch_size=job.batch_size,
                              max_pixels=job.max_pixels, threads=max(1, min(int(cpus), os.cpu_count() or 1)))
    remote = ray.remote(worker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
                                        max_concurrency=IN_FLIGHT_PER_ACTOR)
    actors = [remote.remote(settings, Placement(source, output, job.columns)) for _ in range(count)]
    try:
        loaded = ray.get([actor.load.remote() for actor in actors], timeout=job.startup_timeout or None)
    except ray.exceptions.GetTimeoutError:
        for actor in actors:
            ray.kill(actor)
        raise JobError(f"the cluster did not start {count} actor(s) with {gpus:g} GPU(s) and {cpus:g} CPU(s) each "
                       f"within --startup-timeout {job.startup_timeout:g} s") from None
    errors = [result["error"] for result in loaded if "error" in result]
    if errors:
        for actor in actors:
            ray.kill(actor)
        raise ModelLoadError(errors[0])
    info = loaded[0]["info"]
    model = {key: info.get(key) for key in ("model", "source", "revision", "weights", "random_weights")}
    return actors, model


def _schedule(actors: list, shards: list[Shard], max_retries: int, summary: Summary, progress: bool) -> None:
    """Keep every usable actor busy with up to `IN_FLIGHT_PER_ACTOR` shards from one queue until all are done.

    An actor whose task failed because the actor died is set aside until a probe (`load`, which also reloads
    the model after a restart) answers: Ray restarts it, on another node if its own is gone, and one that
    cannot be placed again must not be handed shards that would wait for it forever.
    """
    pending = deque(shards)
    attempts: Counter[str] = Counter()
    in_flight: dict[ray.ObjectRef, tuple[int, Shard]] = {}
    probes: dict[ray.ObjectRef, int] = {}
    usable = set(range(len(actors)))
    begun = lost_since = time.perf_counter()
    with tqdm(total=len(shards), unit="shard", file=sys.stderr, disable=not progress, mininterval=1.0,
              dynamic_ncols=True) as bar:
        while pending or in_flight:
            busy = Counter(index for index, _ in in_flight.values())
            for index in sorted(usable, key=busy.__getitem__):
                for _ in range(min(IN_FLIGHT_PER_ACTOR - busy[index], len(pending))):
                    shard = pending.popleft()
                    in_flight[actors[index].process.remote(shard, summary.run_id)] = (index, shard)
            summary.in_flight_peak = max(summary.in_flight_peak, len(in_flight))
            if in_flight or usable:
                lost_since = time.perf_counter()
            elif time.perf_counter() - lost_since > LOST_ACTORS_TIMEOUT:
                _give_up(summary, bar, pending, f"no actor left for {LOST_ACTORS_TIMEOUT:g} s (their nodes are gone)")
                return
            ready, _ = ray.wait(list(in_flight) + list(probes), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in probes:
                    _probed(ref, probes, actors, usable)
                    continue
                index, shard = in_flight.pop(ref)
                try:
                    marker = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as error:
                    if isinstance(error, ray.exceptions.RayActorError) and index in usable:
                        usable.discard(index)
                        probes[actors[index].load.remote()] = index
                    attempts[shard.name] += 1
                    if attempts[shard.name] <= max_retries:
                        pending.append(shard)
                    _note_failure(summary, bar, shard.name, _reason(error), final=attempts[shard.name] > max_retries)
                    continue
                summary.shards_written += 1
                summary.images_ok += marker["images_ok"]
                summary.images_failed += marker["images_failed"]
                images = summary.images_ok + summary.images_failed
                bar.set_postfix(images=images, img_per_s=f"{images / (time.perf_counter() - begun):.2f}",
                                refresh=False)
                bar.update()


def _probed(ref: ray.ObjectRef, probes: dict[ray.ObjectRef, int], actors: list, usable: set[int]) -> None:
    """An actor set aside answered its probe: usable again if its model loaded, probed again if it died again."""
    index = probes.pop(ref)
    try:
        answer = ray.get(ref)
    except ray.exceptions.RayActorError:
        probes[actors[index].load.remote()] = index
        return
    if "info" in answer:
        usable.add(index)


def _give_up(summary: Summary, bar: tqdm, pending: deque, reason: str) -> None:
    """Count every shard still waiting as failed for good."""
    while pending:
        _note_failure(summary, bar, pending.popleft().name, reason, final=True)


def _note_failure(summary: Summary, bar: tqdm, shard: str, reason: str, final: bool) -> None:
    """Count and log a failed attempt: a retry, or (`final`) a shard given up."""
    if final:
        summary.shards_failed += 1
        summary.failed.append({"shard": shard, "error": reason})
        bar.write(f"shard {shard} failed for good: {reason}", file=sys.stderr)
        bar.update()
    else:
        summary.retries += 1
        bar.write(f"shard {shard} will be retried: {reason}", file=sys.stderr)


def _reason(error: Exception) -> str:
    """One line saying why an attempt failed."""
    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        cause = error.cause
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    if isinstance(error, ray.exceptions.RayActorError):
        return "the actor died (its process was killed or crashed)"
    return str(error).splitlines()[0]
