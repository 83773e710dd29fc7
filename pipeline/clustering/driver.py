"""The pseudo-class job's driver: plans the shards, trains the centroids on a sample (or reuses those of an
interrupted run), and has a pool of `ClassWorker` actors write every shard's semantic masks.

Exactly once, as the labeling job: a shard is skipped when its `_done/` marker exists, and is otherwise (re)written
whole under the same name. The manifest is written with the centroids' sha256 before the first shard, so a re-run
reuses the very centroids the first shards were assigned with, and a run with other settings is refused.

Memory: the driver holds one count per shard, then the sample (`ClusterJob.sample` x dim float32) while k-means
trains; the actors hold one shard at a time.
"""

from __future__ import annotations

import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import ray

from ..execution.capacity import PLACEMENT_TIMEOUT, ActorShape, JobError, Node, cluster_summary, hostable
from ..execution.command import RunSummary
from ..execution.executor import REPORT_EVERY, Executor, Items, tallying
from ..store.dataset import OutputDataset
from ..store.inputs import InputError
from ..store.location import Location
from ..store.provenance import environment
from . import centroids
from .job import ClusterJob
from .output import CLASS_SCHEMA
from .sample import allocate
from .worker import ClassWorker


@dataclass
class Summary(RunSummary):
    """What a run did (`RunSummary`'s fields and its own); `to_dict()` is the job's last output line.
    `images_failed` counts the rows written as errors: the input's error rows, and rows whose descriptors or mask
    could not be used."""

    centroids: str = ""
    """"trained" by this run, or "reused": those of an earlier run into the same output."""
    centroids_sha256: str = ""
    sample: int = 0
    """Descriptors the centroids were trained on (by this run or the earlier one)."""
    sample_seconds: float = 0.0
    """Part of `seconds` spent counting the descriptors and drawing the sample."""
    train_seconds: float = 0.0
    """Part of `seconds` spent in k-means."""
    assign_seconds: float = 0.0
    """Part of `seconds` spent writing the semantic masks."""


@dataclass
class Plan:
    """A job resolved against its input and output."""

    job: ClusterJob
    source: OutputDataset
    shards: list[str]
    """The input's finished shards, sorted."""
    output: OutputDataset
    todo: list[str]
    """Shards whose semantic masks are not written yet."""
    identity: dict[str, Any]
    """What the output's manifest must match (the centroids' record is added once they are trained)."""
    recorded: dict[str, Any] | None
    """The output's manifest when an earlier run wrote one: its centroids are reused."""
    started: float = field(default_factory=time.perf_counter)


def plan(job: ClusterJob) -> Plan:
    """Read the input's manifest and finished shards and the output's; needs no Ray.

    Raises:
        InputError: the input has no descriptors or no finished shard.
        StorageError: the input is not a labeling output, or a location cannot be read.
        OutputConflict: the output holds masks made with other settings or centroids.
    """
    started = time.perf_counter()
    source = OutputDataset(Location(job.input, job.storage_options))
    manifest = source.manifest()
    if manifest.get("descriptors") is not True:
        raise InputError(f"{job.input}: its masks have no descriptors; label it with jobs/label.py --descriptors")
    shards = sorted(source.done())
    if not shards:
        raise InputError(f"{job.input}: no finished mask file yet")
    output = OutputDataset(Location(job.output, job.storage_options), CLASS_SCHEMA)
    identity = _identity(job, source, manifest)
    recorded = output.check(identity)
    if recorded is not None:
        centroids.load(output.location, recorded["centroids_sha256"])  # refused now rather than after Ray starts
    done = output.done()
    return Plan(job, source, shards, output, [shard for shard in shards if shard not in done], identity, recorded,
                started)


def _identity(job: ClusterJob, source: OutputDataset, manifest: dict[str, Any]) -> dict[str, Any]:
    """What every file of an output must share. `config`, `columns` and `model` are the input's, where readers of a
    labeling output find them: evaluation gives the ground truth the geometry of the masks, the export and the
    preview read the photos back (`store.dataset.manifest_config`, `manifest_columns`)."""
    return {"kind": "pseudo-classes", "input": source.location.uri(""), "source": manifest,
            "config": manifest.get("config"), "columns": manifest.get("columns"), "model": manifest.get("model"),
            "classes": job.classes, "sample": job.sample, "seed": job.seed, "iterations": job.iterations}


def needs_ray(planned: Plan) -> bool:
    """Whether `execute` has work for actors: centroids to train, or shards to write."""
    return planned.recorded is None or bool(planned.todo)


def execute(planned: Plan, progress: bool = True, worker: type[ClassWorker] = ClassWorker) -> Summary:
    """Train the centroids if the output has none yet, then write the remaining shards, on the connected Ray
    cluster (not touched when `needs_ray` is false). `worker` is the actor class (the benchmark's measures its
    memory).

    Raises:
        InputError: too few usable descriptors, or of several dimensions.
        JobError: the cluster cannot host the actors asked for.
    """
    job = planned.job
    summary = Summary(shards_skipped=len(planned.shards) - len(planned.todo), output=planned.output.location.uri(""),
                      run_id=uuid.uuid4().hex, centroids="trained" if planned.recorded is None else "reused")
    recorded = planned.recorded
    if needs_ray(planned):
        shards = planned.shards if recorded is None else planned.todo
        with tallying() as tally:
            pool = Executor(_start_actors(job, planned, len(shards), worker, tally), job.max_retries, job.retry_delay)
            try:
                recorded = recorded or _train(planned, pool, summary, progress)
                _assign(planned, recorded, pool, summary, progress, tally)
            finally:
                for actor in pool.actors:
                    ray.kill(actor)
        summary.retries, summary.in_flight_peak = pool.retries, pool.in_flight_peak
    summary.centroids_sha256, summary.sample = recorded["centroids_sha256"], recorded["sample_used"]
    summary.seconds = time.perf_counter() - planned.started
    return summary


def _start_actors(job: ClusterJob, planned: Plan, shards: int, worker: type[ClassWorker], tally: str) -> list:
    """Start `job.num_actors` actors (default: as many as the cluster hosts now, `capacity.hostable`), never more
    than `shards`, reporting the rows they assign to the `executor.Tally` named `tally`, and wait until they are placed.

    Raises:
        JobError: they do not fit in the cluster now, or are not placed within `PLACEMENT_TIMEOUT`.
    """
    shape = ActorShape(job.cpus_per_actor, 0.0, job.memory_per_actor)
    nodes, available = [Node.from_ray(node) for node in ray.nodes() if node["Alive"]], ray.available_resources()
    room = hostable(shape, nodes, available)
    count = job.num_actors or room
    if not count or count > room:
        asked = f"--num-actors {count}: " if job.num_actors else ""
        raise JobError(f"{asked}the cluster can host {room} actor(s) of {shape.describe()} now "
                       f"({cluster_summary(nodes, available)}); ask for fewer actors, or a smaller --cpus-per-actor "
                       "or --memory-per-actor")
    remote = ray.remote(worker).options(num_cpus=shape.cpus, num_gpus=0, memory=shape.memory or None,
                                        max_restarts=-1, max_task_retries=0)
    actors = [remote.remote(planned.source.location, planned.output.location, max(1, int(shape.cpus)), tally)
              for _ in range(min(count, shards))]
    placed, _ = ray.wait([actor.__ray_ready__.remote() for actor in actors], num_returns=len(actors),
                         timeout=PLACEMENT_TIMEOUT)
    if len(placed) < len(actors):
        for actor in actors:
            ray.kill(actor)
        raise JobError(f"{len(actors) - len(placed)} of {len(actors)} actor(s) of {shape.describe()} were not "
                       f"placed within {PLACEMENT_TIMEOUT:g} s although the cluster had room when the job started; "
                       "other work may have taken it: run again")
    return actors


def _train(planned: Plan, pool: Executor, summary: Summary, progress: bool) -> dict[str, Any]:
    """Draw the sample, train the centroids, save them and claim the output's manifest; returns the manifest."""
    job = planned.job
    begun = time.perf_counter()
    sample = _sample(planned, pool, progress)
    summary.sample_seconds = time.perf_counter() - begun
    if len(sample) < job.classes:
        raise InputError(f"{job.input}: {len(sample)} usable descriptor(s), fewer than --classes {job.classes}")
    begun = time.perf_counter()
    trained = _trained(sample, job)
    summary.train_seconds = time.perf_counter() - begun
    recorded = {**planned.identity, "centroids": centroids.CENTROIDS,
                "centroids_sha256": centroids.save(planned.output.location, trained), "sample_used": len(sample),
                "dim": trained.shape[1], "restarts": centroids.RESTARTS, "faiss": faiss.__version__}
    planned.output.claim(recorded)
    return recorded


def _trained(sample: np.ndarray, job: ClusterJob) -> np.ndarray:
    """`centroids.train` on `sample`, with a line every `REPORT_EVERY` seconds while it runs (minutes for millions
    of descriptors and hundreds of classes; faiss releases the GIL meanwhile)."""
    begun = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffseg-kmeans") as training:
        future = training.submit(centroids.train, sample, job.classes, job.iterations, job.seed)
        while True:
            try:
                return future.result(timeout=REPORT_EVERY)
            except TimeoutError:
                print(f"k-means still training after {time.perf_counter() - begun:.0f} s: {job.classes} classes, "
                      f"{len(sample):,} descriptors of {sample.shape[1]} dimensions, {centroids.RESTARTS} runs of "
                      f"{job.iterations} iterations", file=sys.stderr, flush=True)


def _sample(planned: Plan, pool: Executor, progress: bool) -> np.ndarray:
    """float32 `(n, dim)`: at most `job.sample` descriptors drawn uniformly over the input's shards, in shard order
    whichever actor answers first, so that the same input and seed give the same sample.

    Raises:
        InputError: the input has no usable descriptor, or descriptors of several dimensions.
    """
    job, shards = planned.job, planned.shards
    sizes = allocate(_counts(shards, pool, progress), job.sample, job.seed)
    if not sizes.sum():
        raise InputError(f"{job.input}: no usable descriptor (no row with status ok and segments)")
    index = {shard: i for i, shard in enumerate(shards)}
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    drawn = np.zeros(len(shards), dtype=np.int64)
    sample: np.ndarray | None = None
    chosen = [shard for shard in shards if sizes[index[shard]]]
    for outcome in pool.map(lambda actor, shard: actor.sample.remote(shard, int(sizes[index[shard]]),
                                                                     [job.seed, index[shard]]),
                            chosen, desc="sampling", progress=progress):
        if outcome.error is not None or not len(outcome.result):
            continue
        block = outcome.result
        if sample is None:
            sample = np.empty((int(offsets[-1]), block.shape[1]), dtype=np.float32)
        if block.shape[1] != sample.shape[1]:
            raise InputError(f"{job.input}: descriptors of {outcome.unit} have {block.shape[1]} dimensions, "
                             f"others {sample.shape[1]}")
        start = offsets[index[outcome.unit]]
        sample[start:start + len(block)] = block
        drawn[index[outcome.unit]] = len(block)
    if sample is None:
        raise InputError(f"{job.input}: no usable descriptor (the drawn rows' descriptors cannot be read)")
    return _compact(sample, offsets, drawn)


def _counts(shards: list[str], pool: Executor, progress: bool) -> np.ndarray:
    """int64 `(shards,)`: each shard's descriptors; 0 for a shard that cannot be read (left out of the sample)."""
    counts = dict.fromkeys(shards, 0)
    for outcome in pool.map(lambda actor, shard: actor.count.remote(shard), shards, desc="counting",
                            progress=progress):
        counts[outcome.unit] = outcome.result or 0
    return np.array([counts[shard] for shard in shards], dtype=np.int64)


def _compact(sample: np.ndarray, offsets: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """The first `drawn[i]` rows of each block `sample[offsets[i]:offsets[i + 1]]`, moved together in place
    (blocks fall short when drawn rows had broken descriptors)."""
    end = 0
    for start, count in zip(offsets[:-1], drawn):
        sample[end:end + count] = sample[start:start + count]
        end += count
    return sample[:end]


def _assign(planned: Plan, recorded: dict[str, Any], pool: Executor, summary: Summary, progress: bool,
            tally: str) -> None:
    """Write every remaining shard's semantic masks with the recorded centroids, listing the images written as
    errors (`FailureLog`); the bar counts images as the actors report them to `tally` (a shard's images are known
    once it is read: no time left is shown)."""
    begun = time.perf_counter()
    trained = ray.put(centroids.load(planned.output.location, recorded["centroids_sha256"]))
    provenance = {"pseudo_classes": {key: recorded[key] for key in ("classes", "sample", "sample_used", "seed",
                                                                    "iterations", "restarts", "centroids_sha256",
                                                                    "faiss")},
                  "input": recorded["input"], "source": recorded["source"], **environment(),
                  "run_id": summary.run_id}
    images = Items(tally, done=lambda marker: marker["rows"], planned=lambda shard: None)
    with planned.output.failure_log(summary.run_id) as log:
        for outcome in pool.map(lambda actor, shard: actor.assign.remote(shard, trained, provenance), planned.todo,
                                desc="assigning", progress=progress, items=images):
            summary.record(outcome.unit, outcome.error, outcome.result)
            if outcome.result is not None:
                log.add(outcome.unit, outcome.result["failures"])
        summary.failed_images_file = log.uri
    summary.assign_seconds = time.perf_counter() - begun
