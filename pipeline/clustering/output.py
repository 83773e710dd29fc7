"""The pseudo-class output: the labeling output's layout (`pipeline.store.dataset.OutputDataset`: one Parquet
file per input shard under the same name, `_done/` markers, the `_diffseg.json` manifest) with its own columns,
and the centroids beside them.

    SHARD.parquet           semantic masks of the input's SHARD.parquet
    _done/SHARD.json        written after SHARD.parquet is complete
    _diffseg.json           the manifest: input, K, sample, seed, centroids' sha256, and the input's own manifest
                            (its `config`, `columns` and `model` copied to the top, where evaluation, the export and
                            the preview read them in a labeling output)
    _centroids.npy          float32 (K, dim), unit norm: class k is the segments nearest to row k by cosine
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..store.dataset import MaskRow, mask_schema

NONE = 255
"""Pixel value of the semantic masks where no class applies (a mask pixel whose segment has no descriptor)."""

CLASS_SCHEMA = mask_schema([("classes", pa.list_(pa.int32())), ("distances", pa.list_(pa.float32()))])
"""Columns of every pseudo-class file. `mask`: 8-bit PNG of the semantic mask, pixel = class id of its segment
(`NONE` where none); `num_segments`: segments of the input mask; `classes[i]`: class of the input's segment id i;
`distances[i]`: its cosine distance (1 - cosine) to that class's centroid. The columns `image_id`, `source_uri`,
`width`, `height`, `mask`, `num_segments`, `status`, `error` are the labeling output's, so readers of masks
(evaluation, Ray Data, `datasets`) read these files as they read a labeling output."""


@dataclass
class ClassRow(MaskRow):
    """One output row (`CLASS_SCHEMA`): an image's semantic mask and its segments' classes, or why it has none."""

    classes: list[int] | None = None
    distances: list[float] | None = None


def semantic(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The `(H, W)` uint8 semantic mask of a `(H, W)` label map whose segment id i has class `classes[i]`; pixels
    of ids beyond `classes` get `NONE`."""
    lookup = np.full(max(int(labels.max(initial=0)) + 1, len(classes)), NONE, dtype=np.uint8)
    lookup[:len(classes)] = classes
    return lookup[labels]
