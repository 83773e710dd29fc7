"""A uniform sample of all the descriptors of an output, drawn without holding them: each shard's count first, then
how many of the sample fall in each shard, then which segments of that shard (numpy bookkeeping only).

Every segment of every usable row has the same chance to be drawn: the per-shard sizes follow the multivariate
hypergeometric law of drawing `size` of all the segments without replacement, and within a shard the segments are
drawn uniformly without replacement.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def usable_segments(batch: pa.RecordBatch) -> np.ndarray:
    """int64 `(rows,)`: each row's segments that have descriptors (`num_segments` of `ok` rows; 0 for error rows)."""
    ok = pc.fill_null(pc.equal(batch["status"], "ok"), False)
    counts = pc.fill_null(pc.if_else(ok, batch["num_segments"], 0), 0)
    return np.maximum(counts.to_numpy(zero_copy_only=False).astype(np.int64), 0)


def allocate(counts: np.ndarray, size: int, seed: int) -> np.ndarray:
    """How many of each shard's descriptors a uniform sample of `size` of all of them takes: int64 like `counts`
    (each shard's usable segments), summing to `min(size, counts.sum())`."""
    if size >= counts.sum():
        return counts.astype(np.int64)
    # "marginals": memory and time in the number of shards, not in the number of descriptors.
    return np.random.default_rng(seed).multivariate_hypergeometric(counts, size, method="marginals")


def picks(segments: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`size` distinct segments drawn uniformly from a shard whose row r has `segments[r]` of them: their rows
    and segment ids (int64 `(size,)` each), in file order."""
    ends = np.cumsum(segments)
    chosen = np.sort(rng.choice(int(ends[-1]) if len(ends) else 0, size, replace=False))
    rows = np.searchsorted(ends, chosen, side="right")
    return rows, chosen - (ends[rows] - segments[rows])
