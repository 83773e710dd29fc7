"""Grouping a stream of prepared images into batches the UNet can take in one forward."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def batches(items: Iterable[Item], key: Callable[[Item], Hashable | None], size: int,
            window: int | None = None) -> Iterator[list[Item]]:
    """Lists of up to `size` items with equal `key` (the processing size), in arrival order within a key.

    A batch is yielded as soon as it is full, so a stream of mixed sizes waits only for its own size; the
    short batches left over are yielded at the end, oldest first. An item whose key is None is not batched:
    it is yielded alone as soon as it arrives.

    Args:
        window: if given, a batch is also yielded short once `window` more items to batch (of any key) have
            arrived after its first one, so that none is held back longer; None: only when full.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    # Key -> (arrival number of its first item, its items); oldest first, as a key is added anew after its
    # batch goes out.
    pending: dict[Hashable, tuple[int, list[Item]]] = {}
    arrived = 0
    for item in items:
        group = key(item)
        if group is None:
            yield [item]
            continue
        bucket = pending.setdefault(group, (arrived, []))[1]
        bucket.append(item)
        if len(bucket) == size:
            yield pending.pop(group)[1]
        # Checked at every arrival, so only the oldest batch can just have reached the window.
        oldest = next(iter(pending), None)
        if window is not None and oldest is not None and arrived - pending[oldest][0] >= window:
            yield pending.pop(oldest)[1]
        arrived += 1
    yield from (bucket for _, bucket in pending.values())
