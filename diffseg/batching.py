"""Grouping a stream of prepared images into batches the UNet can take in one forward."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def batches(items: Iterable[Item], key: Callable[[Item], Hashable], size: int) -> Iterator[list[Item]]:
    """Lists of up to `size` items with equal `key` (the processing size), in arrival order within a key.

    A batch is yielded as soon as it is full, so a stream of mixed sizes waits only for its own size; the
    short batches left over are yielded at the end, one per key.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    pending: dict[Hashable, list[Item]] = defaultdict(list)
    for item in items:
        bucket = pending[key(item)]
        bucket.append(item)
        if len(bucket) == size:
            yield pending.pop(key(item))
    yield from (bucket for bucket in pending.values() if bucket)
