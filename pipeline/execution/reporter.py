"""A running call's reports of its progress to the job's tally (`executor.Tally`), from inside the call.

Light to import (Ray only once a tally is named): the actors' classes import it, and run in-process without Ray
too (the benchmarks, the offline GPU check).
"""

from __future__ import annotations

import math
import time
from typing import Any

PUSH_EVERY = 1.0
"""Seconds between a running call's reports of its items done (`Reporter`), and between the loop's reads of them:
a live bar, and few enough calls for one `Tally` to serve hundreds of actors."""


class Reporter:
    """One call's reports of its items done so far to the `Tally` named `tally`: fire-and-forget, at most every
    `PUSH_EVERY` s. Made inside the call (it is keyed by the call's Ray task id); does nothing without a tally (a
    call outside a job, or a tally that is gone: progress never fails a unit)."""

    def __init__(self, tally: str | None) -> None:
        self.tally = _actor(tally) if tally is not None else None
        self.call = _task_id() if self.tally is not None else ""
        self.sent = -math.inf

    def __call__(self, done: int) -> None:
        """`done` items of this call are done."""
        now = time.monotonic()
        if self.tally is not None and now - self.sent >= PUSH_EVERY:
            self.sent = now
            self.tally.set.remote(self.call, done)


def _actor(name: str) -> Any | None:
    """The named actor's handle; None when there is none (any more)."""
    import ray

    try:
        return ray.get_actor(name)
    except ValueError:
        return None


def _task_id() -> str:
    """The Ray task id of the running call."""
    import ray

    return ray.get_runtime_context().get_task_id()
