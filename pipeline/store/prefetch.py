"""Producing items ahead of their consumer: in a background thread (storage and decoding ahead of the model), or
in a pool of threads, in order (decoding images, encoding masks)."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

_END = object()


def prefetch(produce: Callable[[], Iterator[Any]], depth: int) -> Iterator[Any]:
    """The items of `produce()`, computed in a background thread up to `depth` items ahead.

    An exception in the producer is raised here; closing this generator early stops the producer.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)

    thread = threading.Thread(target=run, daemon=True, name="diffseg-prefetch")
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def pool_map(function: Callable[[Any], Any], items: Iterable[Any], pool: Executor, depth: int) -> Iterator[Any]:
    """`function(item)` for each item, in input order, computed in `pool` up to `depth` items ahead of the consumer
    (so at most `depth` inputs and results are held). `items` is read in the consumer's thread.

    An exception of `function` is raised here when its item's turn comes, after the results before it; closing this
    generator early cancels the work not yet started.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
