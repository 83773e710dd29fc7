"""One call per shard on a pool of Ray actors, scheduled as the labeling driver schedules its shards: at most
`IN_FLIGHT_PER_ACTOR` calls per actor from one queue, a failed call retried after a delay that doubles, an actor
that died set aside until Ray has restarted it, and a line at least every `REPORT_EVERY` seconds when no call
finishes."""

from __future__ import annotations

import heapq
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from tqdm import tqdm

from ..labeling.driver import IN_FLIGHT_PER_ACTOR, LOST_ACTORS_TIMEOUT, MAX_RETRY_DELAY, REPORT_EVERY, _reason

Call = Callable[[Any, str], ray.ObjectRef]
"""`call(actor, shard)` starts the shard's call on the actor and returns its reference."""


@dataclass(frozen=True)
class Outcome:
    """How one shard's call ended."""

    shard: str
    result: Any = None
    """The call's answer (None when it failed)."""
    error: str | None = None
    """Why it failed for good (after its retries), in one line; None when it succeeded."""


class ActorPool:
    """The actors a job runs its calls on, and what scheduling them cost (`retries`, `in_flight_peak`)."""

    def __init__(self, actors: list, max_retries: int, retry_delay: float) -> None:
        """`max_retries` further attempts per failed call, the first after `retry_delay` seconds."""
        self.actors = actors
        self.max_retries, self.retry_delay = max_retries, retry_delay
        self.usable = set(range(len(actors)))
        self.probes: dict[ray.ObjectRef, int] = {}
        """Actors set aside after dying, by the reference of the probe that says they are back."""
        self.retries = 0
        self.in_flight_peak = 0

    def map(self, call: Call, shards: Sequence[str], what: str, progress: bool = True) -> Iterator[Outcome]:
        """`call` each shard, and yield each shard's `Outcome` as it ends (in no particular order); `what` names the
        calls in the progress bar and messages."""
        pending = deque(shards)
        delayed: list[tuple[float, str]] = []
        attempts: Counter[str] = Counter()
        in_flight: dict[ray.ObjectRef, tuple[int, str]] = {}
        lost_since = last_news = time.perf_counter()
        with tqdm(total=len(shards), desc=what, unit="shard", file=sys.stderr, disable=not progress,
                  mininterval=1.0, dynamic_ncols=True) as bar:
            while pending or in_flight or delayed:
                now = time.perf_counter()
                while delayed and delayed[0][0] <= now:
                    pending.append(heapq.heappop(delayed)[1])
                self._hand_out(call, pending, in_flight)
                if in_flight or self.usable:
                    lost_since = now
                elif now - lost_since > LOST_ACTORS_TIMEOUT:
                    for shard in [*pending, *(shard for _, shard in delayed)]:
                        yield self._give_up(bar, shard, f"no actor left for {LOST_ACTORS_TIMEOUT:g} s")
                    return
                if now - last_news >= REPORT_EVERY:
                    last_news = now
                    bar.write(f"{what}: {len(in_flight)} shard(s) in progress on {len(self.usable)} actor(s), "
                              f"{len(delayed)} waiting to be retried; none finished in the last {REPORT_EVERY:g} s",
                              file=sys.stderr)
                if not in_flight and not self.probes:
                    time.sleep(min(1.0, max(0.0, delayed[0][0] - now) if delayed else 1.0))
                    continue
                ready, _ = ray.wait([*in_flight, *self.probes], num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in self.probes:
                        self._probed(ref)
                        continue
                    index, shard = in_flight.pop(ref)
                    last_news = time.perf_counter()
                    try:
                        result = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as error:
                        self._set_aside(index, error)
                        attempts[shard] += 1
                        if attempts[shard] > self.max_retries:
                            yield self._give_up(bar, shard, _reason(error))
                            continue
                        delay = min(MAX_RETRY_DELAY, self.retry_delay * 2 ** (attempts[shard] - 1))
                        heapq.heappush(delayed, (time.perf_counter() + delay, shard))
                        self.retries += 1
                        bar.write(f"{what} {shard} will be retried in {delay:g} s: {_reason(error)}", file=sys.stderr)
                        continue
                    bar.update()
                    yield Outcome(shard, result)

    def _hand_out(self, call: Call, pending: deque[str], in_flight: dict[ray.ObjectRef, tuple[int, str]]) -> None:
        """Give every usable actor pending shards up to `IN_FLIGHT_PER_ACTOR`, the least busy first."""
        busy = Counter(index for index, _ in in_flight.values())
        for index in sorted(self.usable, key=busy.__getitem__):
            for _ in range(min(IN_FLIGHT_PER_ACTOR - busy[index], len(pending))):
                shard = pending.popleft()
                in_flight[call(self.actors[index], shard)] = (index, shard)
        self.in_flight_peak = max(self.in_flight_peak, len(in_flight))

    def _set_aside(self, index: int, error: Exception) -> None:
        """An actor whose call failed because it died gets no shard until Ray has restarted it (its probe answers):
        one that cannot be placed again would hold them forever."""
        if isinstance(error, ray.exceptions.RayActorError) and index in self.usable:
            self.usable.discard(index)
            self.probes[self.actors[index].__ray_ready__.remote()] = index

    def _probed(self, ref: ray.ObjectRef) -> None:
        index = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError:
            self.probes[self.actors[index].__ray_ready__.remote()] = index
            return
        self.usable.add(index)

    @staticmethod
    def _give_up(bar: tqdm, shard: str, reason: str) -> Outcome:
        bar.write(f"shard {shard} failed for good: {reason}", file=sys.stderr)
        bar.update()
        return Outcome(shard, error=reason)

