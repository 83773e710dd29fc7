import pytest

from pipeline.labeling.prefetch import prefetch


def test_prefetch_yields_in_order_and_raises_the_producers_error():
    def produce():
        yield from range(5)
        raise OSError("storage went away")

    seen = []
    with pytest.raises(OSError, match="storage went away"):
        for item in prefetch(produce, depth=2):
            seen.append(item)
    assert seen == list(range(5))
