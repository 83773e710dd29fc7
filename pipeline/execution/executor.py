"""The one scheduling loop of every Ray job: units of work from a queue run on a pool of actors.

Each actor gets at most `IN_FLIGHT_PER_ACTOR` units at once (the least busy first), units due to be retried go
before new ones, a failed attempt is retried after a delay that doubles up to `MAX_RETRY_DELAY`, an actor that
died is set aside until the caller's probe answers (Ray restarts it, on another node if its own is gone), and a
line comes at least every `REPORT_EVERY` seconds while no unit finishes.

Progress is counted in units, or (`Items`) in the items the units hold: each running call reports the items it has
done so far to a `Tally` actor (`reporter.Reporter`, fire-and-forget), which the loop reads without waiting, so
that the bar moves while a unit runs. Done items are those of finished units plus those the running calls
reported: a call that failed stops counting, so a retried unit's items are never counted twice.
"""

from __future__ import annotations

import heapq
import itertools
import math
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from tqdm import tqdm

from .command import MAX_RETRY_DELAY
from .reporter import PUSH_EVERY

IN_FLIGHT_PER_ACTOR = 2
"""Units handed to an actor at once: one being worked on, one being read or written. More would let a slow actor
hoard work; fewer would leave the model idle while a shard is uploaded."""
REPORT_EVERY = 30.0
"""Seconds between a job's lines while it waits without news (actors, model replicas, units)."""
LOST_ACTORS_TIMEOUT = 600.0
"""Seconds to wait when every actor has been lost (their nodes gone) before the remaining units are given up;
a re-run finishes them."""

U = TypeVar("U")
Call = Callable[[Any, U], ray.ObjectRef]
"""`call(actor, unit)` starts the unit's work on the actor and returns its reference."""


@dataclass(frozen=True)
class Outcome(Generic[U]):
    """How one unit's work ended."""

    unit: U
    result: Any = None
    """The call's answer (None when it failed)."""
    error: str | None = None
    """Why it failed for good (after its retries), in one line; None when it succeeded."""


@dataclass(frozen=True)
class Items:
    """What the units of a `map` hold, to count progress in items (images) rather than units: the bar counts items,
    with their rate, and the time left once every unit was listed and each one's items are known."""

    tally: str
    """The name of the `Tally` actor that the calls report to (`Reporter`; `tallying`)."""
    done: Callable[[Any], int]
    """The items a successful call's answer accounts for."""
    planned: Callable[[Any], int | None]
    """The items a unit holds, or None when they are known only once it is read."""
    unit: str = "image"


class Tally:
    """The items done so far by each running call, as the calls report them (`Reporter`); a Ray actor (`tallying`)
    read by the loop. Holds the calls the loop last asked about and those that reported since: bounded by the calls
    in flight."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def set(self, call: str, done: int) -> None:
        """`call` (its Ray task id) has done `done` items so far."""
        self.done[call] = done

    def running(self, calls: list[str]) -> dict[str, int]:
        """The items done by `calls`, those still in flight; any other call is forgotten (it ended: its items count
        from its answer, or not at all)."""
        wanted = set(calls)
        self.done = {call: done for call, done in self.done.items() if call in wanted}
        return dict(self.done)


@contextmanager
def tallying() -> Iterator[str]:
    """A new `Tally` actor for the calls of a job, killed when the job ends; yields its name, what the job's actors
    are given (Ray warns that an actor given a handle in its constructor's arguments may not restart). No CPU
    (bookkeeping); restarted empty if it is lost (the calls report again)."""
    name = f"diffseg-tally-{uuid.uuid4().hex}"
    tally = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(Tally).options(name=name).remote()
    try:
        yield name
    finally:
        ray.kill(tally)


def any_answer(answer: Any) -> bool:
    """The default check of a probe's answer: any answer means the actor is back."""
    return True


class Executor:
    """The actors a job runs its units on, and what scheduling them cost (`retries`, `in_flight_peak`).

    `probe(actor)` is asked of an actor that died, again until it answers without dying; `answered(answer)` says
    whether that answer makes it usable again (labeling probes by reloading the model, and an actor whose model
    failed to load stays aside). By default the probe is Ray's own readiness call.
    """

    def __init__(self, actors: list, max_retries: int, retry_delay: float,
                 probe: Callable[[Any], ray.ObjectRef] = lambda actor: actor.__ray_ready__.remote(),
                 answered: Callable[[Any], bool] = any_answer) -> None:
        """`max_retries` further attempts per failed unit, the first after `retry_delay` seconds."""
        self.actors = actors
        self.max_retries, self.retry_delay = max_retries, retry_delay
        self.probe, self.answered = probe, answered
        self.usable = set(range(len(actors)))
        self.probes: dict[ray.ObjectRef, int] = {}
        """Actors set aside after dying, by the reference of the probe that says they are back."""
        self.retries = 0
        self.in_flight_peak = 0

    def map(self, call: Call, units: Iterable[U], name: Callable[[U], str] = str, desc: str | None = None,
            progress: bool = True, items: Items | None = None) -> Iterator[Outcome[U]]:
        """`call` each unit, and yield each unit's `Outcome` as it ends (in no particular order).

        `units` is read as units are handed out (a lazy iterator stays lazy: the progress bar's total is known
        once it ended; a sized collection gives it at once). `name(unit)` names a unit in messages; `desc` names
        the calls in the progress bar and prefixes the lines; with `items`, the bar counts the units' items (the
        units done beside it).
        """
        run = _Run(self, call, iter(units), len(units) if isinstance(units, Sized) else None, name,
                   f"{desc}: " if desc else "", items)
        with tqdm(total=None if items else run.total, desc=desc, unit=items.unit if items else "shard",
                  file=sys.stderr, disable=not progress, mininterval=1.0, dynamic_ncols=True) as bar:
            run.bar = bar
            yield from run.loop()

    def _set_aside(self, index: int, error: Exception) -> None:
        """An actor whose call failed because it died gets no unit until its probe answers: one that cannot be
        placed again would hold them forever."""
        if isinstance(error, ray.exceptions.RayActorError) and index in self.usable:
            self.usable.discard(index)
            self.probes[self.probe(self.actors[index])] = index

    def _probed(self, ref: ray.ObjectRef) -> None:
        """A set-aside actor's probe ended: usable again if the answer says so, probed again if it died again."""
        index = self.probes.pop(ref)
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayActorError:
            self.probes[self.probe(self.actors[index])] = index
            return
        if self.answered(answer):
            self.usable.add(index)


class _Run(Generic[U]):
    """One `Executor.map`: its queue, the units in flight or waiting for a retry, and its progress bar."""

    def __init__(self, executor: Executor, call: Call, units: Iterator[U], total: int | None,
                 name: Callable[[U], str], prefix: str, items: Items | None) -> None:
        self.executor, self.call, self.units, self.total, self.name, self.prefix = (
            executor, call, units, total, name, prefix)
        self.pending: deque[U] = deque()
        self.delayed: list[tuple[float, int, U]] = []
        self.attempts: Counter[str] = Counter()
        self.order = itertools.count()
        """Breaks ties between units due at the same time (units need not be comparable)."""
        self.in_flight: dict[ray.ObjectRef, tuple[int, U]] = {}
        self.given = self.done = 0
        self.ended = False
        self.bar: tqdm
        self.count = _Count(items) if items else None

    def loop(self) -> Iterator[Outcome[U]]:
        executor = self.executor
        lost_since = last_news = time.perf_counter()
        while self.pending or self.in_flight or self.delayed or not self.ended:
            now = time.perf_counter()
            while self.delayed and self.delayed[0][0] <= now:
                self.pending.append(heapq.heappop(self.delayed)[2])
            self._hand_out()
            if self.count:
                self.count.poll(self.in_flight, now)
                self._show()
            if self.in_flight or executor.usable:
                lost_since = now
            elif now - lost_since > LOST_ACTORS_TIMEOUT:
                left = itertools.chain(self.pending, (unit for _, _, unit in self.delayed), self.units)
                reason = f"no actor left for {LOST_ACTORS_TIMEOUT:g} s (their nodes are gone)"
                yield from (self._give_up(unit, reason) for unit in list(left))
                return
            if now - last_news >= REPORT_EVERY:
                last_news = now
                self._report()
            if not self.in_flight and not executor.probes:
                time.sleep(min(1.0, max(0.0, self.delayed[0][0] - now) if self.delayed else 1.0))
                continue
            finished, _ = ray.wait([*self.in_flight, *executor.probes], num_returns=1, timeout=1.0)
            for ref in finished:
                if ref in executor.probes:
                    executor._probed(ref)
                    continue
                last_news = time.perf_counter()
                outcome = self._ended(ref)
                if outcome is not None:
                    yield outcome

    def _hand_out(self) -> None:
        """Give every usable actor units up to `IN_FLIGHT_PER_ACTOR`, the least busy first: those due to be
        retried, then the next ones of the queue."""
        busy = Counter(index for index, _ in self.in_flight.values())
        for index in sorted(self.executor.usable, key=busy.__getitem__):
            for _ in range(IN_FLIGHT_PER_ACTOR - busy[index]):
                unit = self.pending.popleft() if self.pending else self._next()
                if unit is None:
                    break
                self.in_flight[self.call(self.executor.actors[index], unit)] = (index, unit)
        self.executor.in_flight_peak = max(self.executor.in_flight_peak, len(self.in_flight))

    def _next(self) -> U | None:
        if self.ended:
            return None
        unit = next(self.units, None)
        if unit is None:
            self.ended = True
            if self.total is None:
                self.total = self.given
                if not self.count:
                    self.bar.total = self.total
                    self.bar.refresh()
            return None
        self.given += 1
        if self.count:
            self.count.listed(unit)
        return unit

    def _ended(self, ref: ray.ObjectRef) -> Outcome[U] | None:
        """The outcome of a finished call; None when it failed and will be retried."""
        index, unit = self.in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as error:
            self.executor._set_aside(index, error)
            self.attempts[self.name(unit)] += 1
            attempt = self.attempts[self.name(unit)]
            if attempt > self.executor.max_retries:
                return self._give_up(unit, reason(error))
            delay = min(MAX_RETRY_DELAY, self.executor.retry_delay * 2 ** (attempt - 1))
            heapq.heappush(self.delayed, (time.perf_counter() + delay, next(self.order), unit))
            self.executor.retries += 1
            self.bar.write(f"{self.prefix}shard {self.name(unit)} will be retried in {delay:g} s: {reason(error)}",
                           file=sys.stderr)
            return None
        self.done += 1
        if self.count:
            self.count.finished(result)
        self._advance()
        return Outcome(unit, result)

    def _give_up(self, unit: U, why: str) -> Outcome[U]:
        self.done += 1
        if self.count:
            self.count.given_up(unit)
        self.bar.write(f"{self.prefix}shard {self.name(unit)} failed for good: {why}", file=sys.stderr)
        self._advance()
        return Outcome(unit, error=why)

    def _advance(self) -> None:
        """One more unit ended: the bar counts it, or shows it beside the items."""
        if self.count:
            self._show()
        else:
            self.bar.update()

    def _show(self) -> None:
        """The bar at the items done now (both ways: a failed call's items leave the count), units beside."""
        count = self.count
        assert count is not None
        if self.ended and count.total() != self.bar.total:
            self.bar.total = count.total()
        self.bar.set_postfix_str(f"{self.done}/{self._units()} shards", refresh=False)
        self.bar.update(count.items(self.in_flight) - self.bar.n)

    def _units(self) -> str:
        return f"{self.total}" if self.total is not None else f"{self.given} listed so far"

    def _report(self) -> None:
        running = (f"{len(self.in_flight)} shard(s) in progress on {len(self.executor.usable)} actor(s), {self.done} "
                   f"of {self._units()} done, {len(self.delayed)} waiting to be retried")
        if self.count:
            self.bar.write(f"{self.prefix}{self.count.describe(self.in_flight, self.ended, running)}", file=sys.stderr)
            return
        self.bar.write(f"{self.prefix}{running}; no shard finished in the last {REPORT_EVERY:g} s", file=sys.stderr)


class _Count:
    """A `map`'s items: those of the finished units, and what the running calls last reported (`Tally`)."""

    def __init__(self, items: Items) -> None:
        self.items_of = items
        self.finished_items = 0
        self.planned = 0
        self.known = True
        """Every unit listed so far said how many items it holds."""
        self.reported: dict[str, int] = {}
        """Items done by each running call (by task id), as the tally last answered."""
        self.tally = ray.get_actor(items.tally)
        self.reading: ray.ObjectRef | None = None
        self.read_at = -math.inf
        self.started = time.perf_counter()
        self.last: tuple[float, int] = (self.started, 0)
        """When the previous report line was made, and the items done then."""

    def listed(self, unit: Any) -> None:
        planned = self.items_of.planned(unit)
        self.known = self.known and planned is not None
        self.planned += planned or 0

    def finished(self, result: Any) -> None:
        self.finished_items += self.items_of.done(result)

    def given_up(self, unit: Any) -> None:
        """A unit failed for good: its items will not be done (nor remain to be done)."""
        self.planned -= self.items_of.planned(unit) or 0

    def total(self) -> int | None:
        """Every unit's items, once every unit is listed and each said how many it holds; else None."""
        return self.planned if self.known else None

    def items(self, in_flight: dict[ray.ObjectRef, Any]) -> int:
        """Items done: those of the finished units, and those the calls still in flight reported."""
        running = {ref.task_id().hex() for ref in in_flight}
        return self.finished_items + sum(done for call, done in self.reported.items() if call in running)

    def poll(self, in_flight: dict[ray.ObjectRef, Any], now: float) -> None:
        """Take the tally's answer if it came, and ask again every `PUSH_EVERY` s; never waits."""
        if self.reading is not None:
            if not ray.wait([self.reading], timeout=0)[0]:
                return
            try:
                self.reported = ray.get(self.reading)
            except ray.exceptions.RayError:  # the tally was lost: it restarts empty, the calls report again
                self.reported = {}
            self.reading = None
        if in_flight and now - self.read_at >= PUSH_EVERY:
            self.read_at = now
            self.reading = self.tally.running.remote([ref.task_id().hex() for ref in in_flight])

    def describe(self, in_flight: dict[ray.ObjectRef, Any], ended: bool, running: str) -> str:
        """One line: the items done, their rate and the time left (when the total is known), then `running` (the
        units), then whether no item was done since the previous line."""
        now, done = time.perf_counter(), self.items(in_flight)
        rate, unit = done / (now - self.started), self.items_of.unit
        total = self.total() if ended else None
        line = f"{done}/{total} {unit}s" if total is not None else f"{done} {unit}s done"
        line += f", {rate:.2f} {unit}/s"
        if total is not None and rate:
            line += f", {tqdm.format_interval((total - done) / rate)} left"
        since, before = self.last
        self.last = (now, done)
        stalled = f"; no {unit} finished in the last {now - since:.0f} s" if done == before else ""
        return f"{line}; {running}{stalled}"


def reason(error: Exception) -> str:
    """One line saying why an attempt failed."""
    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        cause = error.cause
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    if isinstance(error, ray.exceptions.RayActorError):
        return "the actor died (its process was killed or crashed)"
    return str(error).splitlines()[0]
