"""The one scheduling loop of every Ray job: units of work from a queue run on a pool of actors.

Each actor gets at most `IN_FLIGHT_PER_ACTOR` units at once (the least busy first), units due to be retried go
before new ones, a failed attempt is retried after a delay that doubles up to `MAX_RETRY_DELAY`, an actor that
died is set aside until the caller's probe answers (Ray restarts it, on another node if its own is gone), and a
line comes at least every `REPORT_EVERY` seconds while no unit finishes.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from tqdm import tqdm

from .command import MAX_RETRY_DELAY

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
            progress: bool = True, postfix: Callable[[Outcome[U]], dict[str, Any]] | None = None
            ) -> Iterator[Outcome[U]]:
        """`call` each unit, and yield each unit's `Outcome` as it ends (in no particular order).

        `units` is read as units are handed out (a lazy iterator stays lazy: the progress bar's total is known
        once it ended; a sized collection gives it at once). `name(unit)` names a unit in messages; `desc` names
        the calls in the progress bar and prefixes the lines; `postfix(outcome)` of each success is shown beside
        the bar (images, images/s).
        """
        run = _Run(self, call, iter(units), len(units) if isinstance(units, Sized) else None, name,
                   f"{desc}: " if desc else "")
        with tqdm(total=run.total, desc=desc, unit="shard", file=sys.stderr, disable=not progress, mininterval=1.0,
                  dynamic_ncols=True) as bar:
            run.bar = bar
            yield from run.loop(postfix)

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
                 name: Callable[[U], str], prefix: str) -> None:
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

    def loop(self, postfix: Callable[[Outcome[U]], dict[str, Any]] | None) -> Iterator[Outcome[U]]:
        executor = self.executor
        lost_since = last_news = time.perf_counter()
        while self.pending or self.in_flight or self.delayed or not self.ended:
            now = time.perf_counter()
            while self.delayed and self.delayed[0][0] <= now:
                self.pending.append(heapq.heappop(self.delayed)[2])
            self._hand_out()
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
                    if outcome.error is None and postfix is not None:  # once the caller counted it
                        self.bar.set_postfix(postfix(outcome), refresh=False)

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
                self.total = self.bar.total = self.given
                self.bar.refresh()
            return None
        self.given += 1
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
        self.bar.update()
        return Outcome(unit, result)

    def _give_up(self, unit: U, why: str) -> Outcome[U]:
        self.done += 1
        self.bar.write(f"{self.prefix}shard {self.name(unit)} failed for good: {why}", file=sys.stderr)
        self.bar.update()
        return Outcome(unit, error=why)

    def _report(self) -> None:
        total = f"{self.total}" if self.total is not None else f"{self.given} listed so far"
        self.bar.write(f"{self.prefix}{len(self.in_flight)} shard(s) in progress on {len(self.executor.usable)} "
                       f"actor(s), {self.done} of {total} done, {len(self.delayed)} waiting to be retried; no shard "
                       f"finished in the last {REPORT_EVERY:g} s", file=sys.stderr)


def reason(error: Exception) -> str:
    """One line saying why an attempt failed."""
    if isinstance(error, ray.exceptions.RayTaskError) and error.cause is not None:
        cause = error.cause
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    if isinstance(error, ray.exceptions.RayActorError):
        return "the actor died (its process was killed or crashed)"
    return str(error).splitlines()[0]
