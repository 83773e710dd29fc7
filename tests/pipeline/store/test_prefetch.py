import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.store.prefetch import pool_map, prefetch


def test_prefetch_yields_in_order_and_raises_the_producers_error():
    def produce():
        yield from range(5)
        raise OSError("storage went away")

    seen = []
    with pytest.raises(OSError, match="storage went away"):
        for item in prefetch(produce, depth=2):
            seen.append(item)
    assert seen == list(range(5))


def test_pool_map_keeps_input_order_whatever_order_the_work_finishes_in():
    def slow_for_small(item: int) -> int:
        time.sleep(0.002 * (10 - item % 10))
        return item * item

    with ThreadPoolExecutor(4) as pool:
        assert list(pool_map(slow_for_small, range(40), pool, depth=8)) == [i * i for i in range(40)]


def test_pool_map_runs_at_most_depth_items_ahead_of_its_consumer():
    started: list[int] = []
    with ThreadPoolExecutor(4) as pool:
        results = pool_map(started.append, range(100), pool, depth=3)
        next(results)
        time.sleep(0.05)
        assert len(started) == 3  # the one consumed and two ahead
        results.close()


def test_pool_map_raises_an_items_error_at_its_turn_and_cancels_the_rest():
    started: list[int] = []
    lock = threading.Lock()

    def fail_on_three(item: int) -> int:
        with lock:
            started.append(item)
        if item == 3:
            raise ValueError("item 3 is bad")
        time.sleep(0.01)
        return item

    seen = []
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(ValueError, match="item 3 is bad"):
            for item in pool_map(fail_on_three, range(1000), pool, depth=4):
                seen.append(item)
    assert seen == [0, 1, 2] and max(started) < 3 + 4


def test_pool_map_refuses_a_depth_under_one():
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError):
        next(pool_map(str, [1], pool, depth=0))
