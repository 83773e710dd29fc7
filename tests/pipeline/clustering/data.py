"""Labeling outputs with planted descriptors: every segment's descriptor points along its planted class's own
random direction, so the right pseudo-classes are known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from diffseg import DiffSegConfig
from diffseg.visualize import label_png
from pipeline.store.dataset import OutputDataset, Row, encode_descriptors
from pipeline.store.location import Location


@dataclass(frozen=True)
class PlantedImage:
    """One planted image: its label map and the planted class of each segment id."""

    image_id: str
    labels: np.ndarray
    """`(H, W)` segment ids 0..n-1."""
    classes: list[int]


def manifest(descriptors: bool = True) -> dict:
    """A labeling output's manifest, as `jobs/label.py` writes it (with `--descriptors` when `descriptors`)."""
    config = DiffSegConfig()
    return {"config": config.to_dict(), "config_hash": config.config_hash(), "input": "file:///photos",
            "input_format": "images", "model": {"model": "planted"}, "descriptors": descriptors}


def random_images(count: int, classes: int, seed: int = 0, size: tuple[int, int] = (24, 16)) -> list[PlantedImage]:
    """`count` images of `size` (width, height), each of 2 to 5 vertical bands whose segment ids are shuffled (ids
    mean nothing across images) and whose classes are drawn at random."""
    rng = np.random.default_rng(seed)
    width, height = size
    images = []
    for i in range(count):
        segments = int(rng.integers(2, 6))
        band = np.minimum(np.arange(width) * segments // width, segments - 1)
        ids = rng.permutation(segments)[band]
        images.append(PlantedImage(f"img-{i:04d}.jpg", np.tile(ids, (height, 1)),
                            rng.integers(0, classes, segments).tolist()))
    return images


def write_output(folder: Path | str, images: list[PlantedImage], shards: int, classes: int, dim: int = 64,
                 noise: float = 0.3, seed: int = 0, descriptors: bool = True, errors_per_shard: int = 1) -> None:
    """A labeling output at `folder` (a path or any fsspec URL): `images` over `shards` shards (`part-00000`, ...),
    each with `errors_per_shard` error rows too. A segment of planted class c has the descriptor
    `a * direction[c] + noise * gaussian / sqrt(dim)`, with a in [0.5, 1] (descriptors are means of unit features,
    not unit vectors themselves)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    output = OutputDataset(Location(str(folder)))
    output.claim(manifest(descriptors))
    for shard in range(shards):
        rows = [Row.failed(f"broken-{shard}-{i}.jpg", f"file:///photos/broken-{shard}-{i}.jpg", "cannot decode image")
                for i in range(errors_per_shard)]
        for image in images[shard::shards]:
            vectors = (directions[image.classes] * rng.uniform(0.5, 1.0, (len(image.classes), 1))
                       + noise * rng.standard_normal((len(image.classes), dim)) / np.sqrt(dim))
            height, width = image.labels.shape
            rows.append(Row(image.image_id, f"file:///photos/{image.image_id}", width, height,
                            label_png(image.labels), len(image.classes), [],
                            descriptors=encode_descriptors(vectors) if descriptors else None))
        output.write(f"part-{shard:05d}", rows, {"run_id": "planted"})


def matched_accuracy(planted: list[int], found: list[int]) -> float:
    """The fraction of segments whose found class is their planted class, after one Hungarian matching of found
    class ids to planted ones over all segments."""
    size = max(max(planted), max(found)) + 1
    histogram = np.zeros((size, size), dtype=np.int64)
    np.add.at(histogram, (planted, found), 1)
    rows, columns = linear_sum_assignment(histogram, maximize=True)
    return histogram[rows, columns].sum() / len(planted)
