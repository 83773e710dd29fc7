"""The labeling job's driver: plans shards, runs a pool of `LabelWorker` Ray actors over them, and reports.

Exactly once, per input file: each `_done/` marker records the input files its shard covers, and a run puts
only the files that no finished shard covers into new shards (under names no finished shard has), so re-running
after any failure, or after the input grew, labels every file once. Covered files that changed or vanished
since are reported, and relabeled (their whole shard, under its own name) only when the job asks.

Planning streams: shards are formed while the input is listed, the first ones are handed to actors while the
listing goes on, and the driver holds the shards in flight or waiting for a retry, one folder's listing, and
(re-runs) a few markers of each earlier run, never the whole listing. The shards run on the one executor of
every job (`pipeline.execution.executor`).
"""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from diffseg import ModelLoadError

from ..execution import capacity, executor
from ..execution.capacity import Actors, ActorShape, JobError, Node, actor_shape, cluster_summary, fit
from ..execution.command import RunSummary
from ..execution.executor import IN_FLIGHT_PER_ACTOR, Executor, reason
from ..store.dataset import OutputDataset, RunLog
from ..store.inputs import Listing, Shard, SourceFile, listing
from ..store.location import Location
from .job import LabelJob
from .planning import Change, Comparison, next_part, shards
from .worker import LabelWorker, Placement, WorkerSettings

LOADING_REPORT_AFTER = 60.0
"""Seconds a replica may load its model before the driver reports it as still loading."""
MAX_LOAD_DEATHS = 2
"""Restarts of an actor that dies while loading the model (out of memory, say) before the job gives up."""


@dataclass
class Summary(RunSummary):
    """What a labeling run did (`RunSummary`'s fields and its own); `to_dict()` is the job's last output line."""

    files_ignored: int = 0
    """Files under the input that were not read: other extensions than the input's kind, hidden files."""
    ignored_files: list[str] = field(default_factory=list)
    """The keys (paths under the input) of the first `inputs.IGNORED_NAMED` of them, in key order."""
    ignored_files_file: str = ""
    """URI of the list of every one of them (`_runs/RUN_ID.ignored.jsonl`, one `{"key": KEY}` a line, in key
    order); "" when there is none."""
    startup_seconds: float = 0.0
    """Part of `seconds` spent starting the actors and loading their model replicas."""
    files_new: int = 0
    """Input files that no finished shard covered: labeled by this run (in new shards)."""
    files_changed: int = 0
    """Covered input files whose size, etag or mtime changed since their shard was written (relabeled only with
    `LabelJob.relabel_changed`)."""
    files_vanished: int = 0
    """Covered input files that are gone from the input (their rows stay, unless their shard is redone)."""
    files_relabeled: int = 0
    """Changed files whose shards this run redoes (`LabelJob.relabel_changed`)."""
    changes: str = ""
    """URI of the listing of the changed and vanished files (`_changes/RUN_ID.json`); "" when there are none."""
    unfinished_removed: int = 0
    """Mask files without a `_done/` marker (left by a run stopped between the two writes) deleted by this run."""
    max_files_reached: bool = False
    """The run labeled `LabelJob.max_files` new files and stopped listing there: the files after them were not
    looked at (nor counted as changed or vanished); a run without the limit labels them."""
    images_warned: int = 0
    """Images labeled (`images_ok`) whose row has a `warning`: a mask coarser than the settings ask for (a cut that
    stopped at its work bound)."""

    def record(self, shard: str, error: str | None, marker: dict[str, Any] | None) -> None:
        super().record(shard, error, marker)
        if marker is not None:
            self.images_warned += marker.get("images_warned", 0)

    def to_dict(self) -> dict[str, Any]:
        """All fields (times rounded to ms) and `images_per_second` over the whole run."""
        images = self.images_ok + self.images_failed
        return {**super().to_dict(), "images_per_second": round(images / self.seconds, 3) if self.seconds else 0.0}


class Todo:
    """The shards left to do, made as the listing is read: iterated once (`next`) by the scheduler, and truthy
    when there is at least one (`plan` reads the first one ahead, so an empty input fails before Ray starts)."""

    def __init__(self, shards: Iterator[Shard]) -> None:
        self._shards = shards
        self._ahead: deque[Shard] = deque()
        self._ended = False
        self.given = 0
        """Shards handed out so far: all of them once `done`."""

    def ahead(self, count: int) -> int:
        """Read up to `count` shards ahead; returns how many are (fewer than `count`: the listing ended)."""
        while len(self._ahead) < count and not self._ended:
            shard = next(self._shards, None)
            self._ended = shard is None
            if shard is not None:
                self._ahead.append(shard)
        return len(self._ahead)

    def next(self) -> Shard | None:
        """The next shard; None once every one was handed out."""
        if not self.ahead(1):
            return None
        self.given += 1
        return self._ahead.popleft()

    @property
    def done(self) -> bool:
        """Every shard was handed out (and `given` is their number)."""
        return self._ended and not self._ahead

    def __bool__(self) -> bool:
        return self.ahead(1) > 0

    def __iter__(self) -> Iterator[Shard]:
        while (shard := self.next()) is not None:
            yield shard


@dataclass
class Plan:
    """A job resolved against its input and output: the shards left to do, formed as the input is listed."""

    job: LabelJob
    source: Location
    output: OutputDataset
    todo: Todo
    """Shards of the files no finished shard covers, then (with `relabel_changed`) finished shards to redo."""
    finished: list[str]
    """The shards finished before this run."""
    listing: Listing
    comparison: Comparison
    """The input's files compared with those the finished shards cover; final once `todo` is done."""
    identity: dict[str, Any]
    """What the output's manifest must match (the model's identity is added when a replica reports it)."""
    run_id: str
    """This run's id (hex), made when planning began: the summary, the mask files' provenance and the run's files
    under the output name it."""
    ignored: RunLog
    """Every input file the listing leaves out (`OutputDataset.ignored_log`), written once the run goes ahead
    (`record_ignored`), then as they are listed; complete once the plan is closed."""
    redone: list[Shard] = field(default_factory=list)
    """Finished shards redone (`relabel_changed`); known once `todo` is done."""
    started: float = field(default_factory=time.perf_counter)
    """When planning began (`time.perf_counter()`); the summary's `seconds` count from here."""

    @property
    def skipped(self) -> int:
        """Finished shards left as they are (once `todo` is done)."""
        return len(self.finished) - len(self.redone)

    def begin(self) -> None:
        """Record where this run's new image shards start (`OutputDataset.start_run`): called before the first
        shard is handed out, once the output is claimed (a job that stops before leaves no such record)."""
        if self.listing.format == "images":
            self.output.start_run(f"part-{next_part(self.finished):05d}")
        self.record_ignored()

    def record_ignored(self) -> None:
        """Start writing the input files the listing leaves out to `ignored`: those listed so far (held since, on a
        temporary file past a megabyte), then each as it is listed. Called once the run goes ahead (`begin`, or
        with nothing left to label), so that a run refused before writes nothing to the output."""
        self.listing.attach(lambda key: self.ignored.write({"key": key}))

    def close(self) -> None:
        """Complete the files written as the listing is read (`ignored`); again does nothing. `execute` closes its
        plan, and so does a `with` block (for a plan that may never reach `execute`)."""
        self.ignored.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *raised: object) -> None:
        self.close()


def plan(job: LabelJob) -> Plan:
    """List the input up to its first shard left to do, and the files the output's finished shards cover; needs
    no Ray. The rest of the input is listed as `todo` is read.

    The files no finished shard covers make new shards, numbered after the finished ones (never from their
    position in the listing, which shifts when files are added); with `job.relabel_changed` the finished
    shards holding changed files are redone too, after the listing ended.

    Nothing is written to the output: the input files the listing leaves out are held until the run goes ahead
    (`Plan.record_ignored`). The plan must be closed: `execute` does.

    Raises:
        InputError, StorageError: the input cannot be listed or holds nothing usable.
        OutputConflict: the output already holds masks made with other settings.
    """
    started = time.perf_counter()
    run_id = uuid.uuid4().hex
    source = Location(job.input, job.storage_options)
    dataset = OutputDataset(Location(job.output, job.storage_options))
    found = listing(source, job.input_format, job.columns)
    identity = _identity(job, source, found.format)
    dataset.check(identity)
    finished = sorted(dataset.done())
    comparison = Comparison(dataset.covered(finished), found)
    redone: list[Shard] = []
    todo = Todo(_todo(job, found.format, dataset, finished, comparison, redone))
    todo.ahead(1)
    return Plan(job, source, dataset, todo, finished, found, comparison, identity, run_id,
                dataset.ignored_log(run_id), redone, started)


def _todo(job: LabelJob, input_format: str, dataset: OutputDataset, finished: list[str], comparison: Comparison,
          redone: list[Shard]) -> Iterator[Shard]:
    """New shards as the listing is read, then (`relabel_changed`) the finished ones to redo, added to `redone`."""
    new = comparison if job.max_files is None else itertools.islice(comparison, job.max_files)
    yield from shards(input_format, new, job.shard_size, first=next_part(finished))
    if job.relabel_changed:
        redone.extend(comparison.redo(input_format, dataset.markers(comparison.redone_names)))
        yield from redone


def execute(planned: Plan, progress: bool = True, worker: type[LabelWorker] = LabelWorker) -> Summary:
    """Label the planned remaining shards on the connected Ray cluster (Ray is not touched when none are left).

    `worker` is the actor class: a `LabelWorker`, or a subclass with another model (the driver benchmark runs a
    no-op one through this same path). Changed and vanished input files are counted and listed once the
    listing ended. The plan is closed when this returns or raises: the list of the files it ignored
    (`Summary.ignored_files_file`) is complete.

    Raises:
        ModelLoadError: a replica could not load the model; nothing was written.
        JobError: the cluster cannot host the actors asked for.
        OutputConflict: the model differs from the one the output was started with.
        InputError, StorageError: the rest of the input cannot be listed (shards already written stay done).
    """
    summary = Summary(output=planned.output.location.uri(""), run_id=planned.run_id)
    with planned:
        summary.unfinished_removed = len(planned.output.remove_unfinished())
        if planned.todo:
            with executor.tallying() as tally:
                _label(planned, summary, progress, worker, tally)
        else:
            planned.record_ignored()
        _count_files(planned, summary)
    summary.ignored_files_file = planned.ignored.uri
    summary.seconds = time.perf_counter() - planned.started
    return summary


def _label(planned: Plan, summary: Summary, progress: bool, worker: type[LabelWorker], tally: str) -> None:
    """Start the actors (reporting their images done to `tally`), claim the output and label every planned shard."""
    starting = time.perf_counter()
    actors, model = _start_actors(planned.job, planned.source, planned.output.location, planned.todo, worker, tally)
    summary.startup_seconds = time.perf_counter() - starting
    try:
        planned.output.claim({**planned.identity, "model": model})
        planned.begin()
        _schedule(actors, planned, summary, progress, tally)
    finally:
        for actor in actors:
            ray.kill(actor)


def run(job: LabelJob, progress: bool = True) -> Summary:
    """`execute(plan(job))`: label every shard of `job.input` not yet done in `job.output`."""
    return execute(plan(job), progress)


def _count_files(planned: Plan, summary: Summary) -> None:
    """The summary's counts of input files, and the `_changes/` listing, once the listing ended."""
    comparison = planned.comparison
    summary.shards_skipped, summary.files_ignored = planned.skipped, planned.listing.ignored
    summary.ignored_files = list(planned.listing.ignored_keys)
    summary.files_new, summary.files_changed = comparison.new, len(comparison.changed)
    summary.files_vanished = len(comparison.vanished)
    summary.files_relabeled = len(comparison.changed) if planned.job.relabel_changed else 0
    summary.max_files_reached = comparison.new == planned.job.max_files
    if comparison.changed or comparison.vanished:
        summary.changes = planned.output.write_changes(summary.run_id, _changes(planned, summary.run_id))


def _changes(planned: Plan, run_id: str) -> dict[str, Any]:
    """The listing of the changed and vanished input files that `_changes/RUN_ID.json` holds."""
    return {"run_id": run_id, "input": planned.source.uri(""), "relabeled": planned.job.relabel_changed,
            "changed": [_change(change) for change in planned.comparison.changed],
            "vanished": [_change(change) for change in planned.comparison.vanished]}


def _change(change: Change) -> dict[str, Any]:
    entry = {"key": change.recorded.key, "shard": change.shard, "recorded": _version(change.recorded)}
    if change.now is not None:
        entry["now"] = _version(change.now)
    return entry


def _version(file: SourceFile) -> dict[str, Any]:
    return {"size": file.size, "etag": file.etag, "mtime": file.mtime}


def _identity(job: LabelJob, source: Location, input_format: str) -> dict[str, Any]:
    """What every file of an output must share; the model's identity is added once a replica reports it."""
    return {"config": job.config.to_dict(), "config_hash": job.config.config_hash(), "input": source.uri(""),
            "input_format": input_format, "columns": asdict(job.columns),
            "shard_size": job.shard_size if input_format == "images" else None,
            # None rather than False when not asked: what a manifest from before descriptors existed reads as.
            "descriptors": True if job.descriptors else None}


def actors_for(job: LabelJob, shards: int) -> Actors:
    """The actor pool for `shards` shards of `job` on the connected cluster (see `capacity.fit`)."""
    nodes = _nodes()
    shape = actor_shape(nodes, job.model, job.gpus_per_actor, job.cpus_per_actor, job.memory_per_actor)
    return fit(shape, nodes, ray.available_resources(), job.num_actors, shards, autoscaling=job.startup_timeout > 0)


def _nodes() -> list[Node]:
    return [Node.from_ray(node) for node in ray.nodes() if node["Alive"]]


def _start_actors(job: LabelJob, source: Location, destination: Location, todo: Todo,
                  worker: type[LabelWorker], tally: str) -> tuple[list, dict]:
    """Start the actor pool and load a model replica in each; returns the actors and the model's identity. The
    actors report their images done to the `executor.Tally` named `tally`.

    No more actors than shards: the shards are read ahead up to the pool's size, never further (the listing
    may not have ended)."""
    pool = actors_for(job, sys.maxsize)
    shape = pool.shape
    pool = Actors(min(pool.count, todo.ahead(pool.count)), shape)
    settings = WorkerSettings(model=job.model, config=job.config, revision=job.revision,
                              device="cuda" if shape.gpus else "cpu", dtype=job.dtype, batch_size=job.batch_size,
                              max_pixels=job.max_pixels, threads=max(1, int(shape.cpus)), descriptors=job.descriptors,
                              gpu_share=shape.gpus or 1.0)
    remote = ray.remote(worker).options(num_cpus=shape.cpus, num_gpus=shape.gpus, memory=shape.memory or None,
                                        max_restarts=-1, max_task_retries=0, max_concurrency=IN_FLIGHT_PER_ACTOR)
    actors = [remote.remote(settings, Placement(source, destination, job.columns), tally) for _ in range(pool.count)]
    try:
        loaded = _await_replicas(actors, shape, job.startup_timeout)
    except BaseException:
        for actor in actors:
            ray.kill(actor)
        raise
    info = loaded["info"]
    model = {key: info.get(key) for key in ("model", "source", "revision", "weights", "random_weights")}
    return actors, model


def _await_replicas(actors: list, shape: ActorShape, startup_timeout: float) -> dict[str, Any]:
    """Wait until every actor is placed and has loaded its model replica; returns the first `load` answer.

    Placement is bounded (`startup_timeout`, or `PLACEMENT_TIMEOUT` when the cluster had room at the start);
    loading is not (a first download of the weights can take long), but a replica still loading after
    `LOADING_REPORT_AFTER` seconds is reported every `REPORT_EVERY` seconds, as are actors still unplaced.

    Raises:
        JobError: actors not placed in time, or an actor that keeps dying while it loads the model.
        ModelLoadError: a replica could not load the model.
    """
    placing = {actor.__ray_ready__.remote(): index for index, actor in enumerate(actors)}
    loading = {actor.load.remote(): index for index, actor in enumerate(actors)}
    placed: dict[int, float] = {}
    deaths: Counter[int] = Counter()
    first: dict[str, Any] = {}
    started = reported = time.monotonic()
    limit = startup_timeout or capacity.PLACEMENT_TIMEOUT
    while loading:
        ready, _ = ray.wait([*placing, *loading], num_returns=1, timeout=1.0)
        now = time.monotonic()
        for ref in ready:
            if ref in placing:
                placed.setdefault(placing.pop(ref), now)
                continue
            index = loading.pop(ref)
            placed.setdefault(index, now)
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                deaths[index] += 1
                if deaths[index] > MAX_LOAD_DEATHS:
                    raise JobError(f"actor {index + 1} died {deaths[index]} times while loading the model "
                                   f"({reason(error)}); is {shape.describe()} enough for it?") from None
                loading[actors[index].load.remote()] = index
                continue
            if "error" in answer:
                raise ModelLoadError(answer["error"])
            first = first or answer
        unplaced = [index for index in range(len(actors)) if index not in placed]
        if unplaced and now - started > limit:
            raise JobError(_not_placed(len(actors), len(unplaced), shape, startup_timeout))
        if now - reported >= executor.REPORT_EVERY:
            reported = now
            _report_startup(unplaced, placed, loading.values(), shape, now)
    return first


def _not_placed(count: int, unplaced: int, shape: ActorShape, startup_timeout: float) -> str:
    where = cluster_summary(_nodes(), ray.available_resources())
    if startup_timeout:
        return (f"the cluster did not start {count} actor(s) of {shape.describe()} within --startup-timeout "
                f"{startup_timeout:g} s ({unplaced} not placed; {where})")
    return (f"{unplaced} of {count} actor(s) of {shape.describe()} were not placed within "
            f"{capacity.PLACEMENT_TIMEOUT:g} s although the cluster had room when the job started ({where}); other "
            "work may have taken it: run again, or give --startup-timeout to wait for it")


def _report_startup(unplaced: list[int], placed: dict[int, float], loading: Iterable[int], shape: ActorShape,
                    now: float) -> None:
    """One line each for actors waiting for a node and replicas slow to load their model."""
    if unplaced:
        print(f"waiting for the cluster: {len(unplaced)} actor(s) not placed yet ({_numbers(unplaced)}), each needs "
              f"{shape.describe()}; {cluster_summary(_nodes(), ray.available_resources())}", file=sys.stderr,
              flush=True)
    slow = sorted(index for index in set(loading) if index in placed and now - placed[index] >= LOADING_REPORT_AFTER)
    if slow:
        print(f"actor(s) {_numbers(slow)} still loading the model after "
              f"{now - min(placed[index] for index in slow):.0f} s", file=sys.stderr, flush=True)


def _numbers(indices: list[int]) -> str:
    """Actor numbers as people count them (1-based), at most 10 listed."""
    listed = ", ".join(str(index + 1) for index in indices[:10])
    return listed + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


def _schedule(actors: list, planned: Plan, summary: Summary, progress: bool, tally: str) -> None:
    """Label every shard of `planned.todo` on `actors` (the executor's loop: at most `IN_FLIGHT_PER_ACTOR` shards
    per actor, retries, lost actors, images counted as the actors report them to the tally named `tally`),
    counting what each wrote in `summary` and listing its failed images (`FailureLog`). An actor that died is given
    shards again once its model reloaded (`load` is the probe: it also says whether the replica is usable)."""
    job = planned.job
    pool = Executor(actors, job.max_retries, job.retry_delay, probe=lambda actor: actor.load.remote(),
                    answered=lambda answer: "info" in answer)
    # Image folders' shards list their images; tar and Parquet shards are counted once read (no time left shown).
    images = executor.Items(tally, done=lambda marker: marker["rows"],
                            planned=lambda shard: len(shard.files) if shard.format == "images" else None)
    try:
        with planned.output.failure_log(summary.run_id) as log:
            for outcome in pool.map(lambda actor, shard: actor.process.remote(shard, summary.run_id), planned.todo,
                                    name=lambda shard: shard.name, progress=progress, items=images):
                summary.record(outcome.unit.name, outcome.error, outcome.result)
                if outcome.result is not None:
                    log.add(outcome.unit.name, outcome.result["failures"])
            summary.failed_images_file = log.uri
    finally:
        summary.retries, summary.in_flight_peak = pool.retries, pool.in_flight_peak
