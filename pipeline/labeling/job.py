"""`LabelJob`: everything that defines a labeling run, as the command line gives it. Light to import (no Ray,
no torch), so the command line checks its flags before the heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffseg.config import DiffSegConfig
from diffseg.defaults import DEFAULT_MODEL, MAX_PIXELS

from ..store.inputs import ParquetColumns


@dataclass(frozen=True)
class LabelJob:
    """Everything that defines a labeling run."""

    input: str
    """fsspec URL of the input: a folder of images, of WebDataset `.tar` shards, or of Parquet files."""
    output: str
    """fsspec URL of the output folder (see `pipeline.store.dataset`)."""
    model: str = DEFAULT_MODEL
    revision: str | None = None
    config: DiffSegConfig = field(default_factory=DiffSegConfig)
    input_format: str = "auto"
    """"auto", "images", "tar" or "parquet"."""
    shard_size: int = 1000
    """Images per shard for image-folder inputs."""
    columns: ParquetColumns = field(default_factory=ParquetColumns)
    num_actors: int | None = None
    """Model replicas; None: as many as the cluster can host now (`capacity.fit`)."""
    gpus_per_actor: float | None = None
    """None: 1 when the cluster has GPUs, else 0 (CPU)."""
    cpus_per_actor: float | None = None
    """None: for GPU actors the CPUs that come with their GPUs on a node; the CPUs of the smallest node for CPU
    actors (`capacity.actor_shape`)."""
    memory_per_actor: float | None = None
    """Bytes of host memory each actor reserves; None: `capacity.ACTOR_MEMORY`."""
    batch_size: int | None = None
    """Images per UNet forward; None: the replica's `DiffSeg.default_batch_size` (8 on a GPU, 1 on CPU)."""
    dtype: str | None = None
    max_pixels: int = MAX_PIXELS
    descriptors: bool = False
    """Write each segment's descriptor (`diffseg.descriptors`) in the `descriptors` column, for `jobs/cluster.py`."""
    max_retries: int = 5
    """Further attempts for a shard whose attempt failed (actor died, storage error) before giving up."""
    retry_delay: float = 5.0
    """Seconds before a failed shard's first retry; each further retry waits twice as long (at most
    `execution.command.MAX_RETRY_DELAY`), so an object store that is down for a minute costs retries, not shards."""
    startup_timeout: float = 0.0
    """Seconds to wait for the cluster to host the actors. 0: the cluster must have the resources now (the job
    is refused otherwise); more: an autoscaling cluster may add the nodes first (actor requests are what make
    it scale up), and the job is refused if they are not there in time."""
    relabel_changed: bool = False
    """Redo the finished shards holding input files that changed since they were written (each such shard whole,
    under its own name, so its new mask file replaces the old one); otherwise they are only reported."""
    max_files: int | None = None
    """Label at most this many of the input files no finished shard covers, the first ones in key order, and stop
    listing there: a trial run on the start of a huge input. A later run without it labels the rest. None: all."""
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
