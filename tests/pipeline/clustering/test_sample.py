"""Drawing a uniform sample of all the descriptors of an output without holding them."""

import numpy as np
import pyarrow as pa

from pipeline.clustering.sample import allocate, picks, usable_segments


def test_usable_segments_are_those_of_ok_rows():
    batch = pa.record_batch({"status": ["ok", "error", "ok", "ok", None],
                             "num_segments": pa.array([3, None, 0, 2, 4], type=pa.int32())})
    assert usable_segments(batch).tolist() == [3, 0, 0, 2, 0]


def test_a_sample_larger_than_the_output_takes_every_descriptor():
    assert allocate(np.array([10, 0, 5]), 100, seed=0).tolist() == [10, 0, 5]


def test_each_shard_gives_the_sample_its_share_of_the_descriptors():
    counts = np.array([100, 10_000, 900, 0])
    draws = np.array([allocate(counts, 1_000, seed) for seed in range(200)])
    assert (draws.sum(axis=1) == 1_000).all() and (draws <= counts).all()
    assert np.allclose(draws.mean(axis=0), [10, 909.1, 81.8, 0], atol=2)


def test_the_allocation_is_seeded():
    counts = np.array([5_000, 7_000, 3_000])
    assert allocate(counts, 100, seed=3).tolist() == allocate(counts, 100, seed=3).tolist()
    assert any(allocate(counts, 100, seed=3).tolist() != allocate(counts, 100, seed=s).tolist() for s in range(4, 9))


def test_picks_are_distinct_segments_of_rows_that_have_them_in_file_order():
    segments = np.array([3, 0, 2, 0, 4])
    rows, ids = picks(segments, 9, np.random.default_rng(0))
    assert sorted(zip(rows.tolist(), ids.tolist())) == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1),
                                                          (4, 0), (4, 1), (4, 2), (4, 3)]
    rows, ids = picks(segments, 4, np.random.default_rng(1))
    assert (np.diff(rows) >= 0).all() and (ids < segments[rows]).all()
    assert len(set(zip(rows.tolist(), ids.tolist()))) == 4


def test_every_segment_is_equally_likely_to_be_picked():
    segments = np.array([1, 5, 0, 2])
    hits = np.zeros((4, 5))
    for seed in range(2_000):
        rows, ids = picks(segments, 2, np.random.default_rng(seed))
        np.add.at(hits, (rows, ids), 1)
    assert np.allclose(hits[segments[:, None] > np.arange(5)] / 2_000, 2 / 8, atol=0.04)
