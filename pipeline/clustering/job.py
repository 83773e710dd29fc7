"""`ClusterJob`: everything that defines a pseudo-class run, as the command line gives it. Light to import (no
Ray, no faiss), so the command line checks its flags before the heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..execution.capacity import GIB

MAX_CLASSES = 255
"""Class ids are the pixels of 8-bit PNG masks, where 255 means "no class": ids 0..254."""
DEFAULT_SAMPLE = 200_000
"""Descriptors k-means is trained on by default. The driver holds them as float32: 4 x dim bytes each, so 1 GB at
1,280 dimensions (the descriptors of SD 1.x and SDXL-family models), which any node's memory holds; faiss needs
only a few hundred points per class (at most 255 classes: 65,280 points at 256 each), so more would cost time, not
quality."""
ACTOR_MEMORY = 1 * GIB
"""Host memory (bytes) an actor reserves by default: one shard at a time, read in batches of `worker.BATCH_ROWS`
rows (a labeling shard of 1,000 images is some 70 MB with its masks and 1,280-dim descriptors)."""


@dataclass(frozen=True)
class ClusterJob:
    """Everything that defines a pseudo-class run."""

    input: str
    """fsspec URL of a labeling output made with `--descriptors`."""
    output: str
    """fsspec URL of the pseudo-class output (the labeling output's layout; see `pipeline.clustering.output`)."""
    classes: int
    """K: the number of pseudo-classes, 2..`MAX_CLASSES`."""
    sample: int = DEFAULT_SAMPLE
    """At most this many descriptors, drawn uniformly over the whole input, train the centroids."""
    seed: int = 0
    """Seeds the sample and k-means: the same input and seed give the same centroids."""
    iterations: int = 20
    """k-means iterations (faiss's `niter`)."""
    num_actors: int | None = None
    """None: as many as the cluster can host now (`capacity.hostable`)."""
    cpus_per_actor: float = 1.0
    memory_per_actor: float = ACTOR_MEMORY
    """Bytes of host memory each actor reserves; 0 reserves none."""
    max_retries: int = 5
    """Further attempts for a shard whose attempt failed (actor died, storage error) before giving up."""
    retry_delay: float = 5.0
    """Seconds before a failed shard's first retry, doubling for each further one (at most 60)."""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
