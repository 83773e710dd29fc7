import pytest

from diffseg.batching import batches


def test_full_batches_come_as_they_fill_and_leftovers_at_the_end():
    items = ["a1", "b1", "a2", "a3", "b2", "a4", "c1"]
    assert list(batches(items, key=lambda item: item[0], size=2)) == [["a1", "a2"], ["b1", "b2"], ["a3", "a4"],
                                                                       ["c1"]]


def test_a_lazy_stream_is_consumed_only_as_far_as_needed():
    seen = []

    def stream():
        for i in range(10):
            seen.append(i)
            yield i

    first = next(batches(stream(), key=lambda i: i % 2, size=2))
    assert first == [0, 2] and seen == [0, 1, 2]


def test_the_size_must_be_positive():
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        list(batches([1], key=id, size=0))


def test_items_without_a_key_come_alone_at_once():
    items = ["a1", "x", "a2", "b1", "y"]
    assert list(batches(items, key=lambda item: None if item in "xy" else item[0], size=2)) == [
        ["x"], ["a1", "a2"], ["y"], ["b1"]]


def test_a_batch_goes_out_short_once_a_window_of_items_to_batch_arrived_after_it():
    items = ["b1", "a1", "x", "a2", "a3", "a4", "b2"]
    batched = batches(items, key=lambda item: None if item == "x" else item[0], size=2, window=3)
    # b1 is the 1st item to batch; a3, the 3rd after it, sends it out.
    assert list(batched) == [["x"], ["a1", "a2"], ["b1"], ["a3", "a4"], ["b2"]]
    with pytest.raises(ValueError, match="window must be at least 1"):
        list(batches([1], key=id, size=1, window=0))
