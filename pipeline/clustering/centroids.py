"""The centroids: trained by faiss's spherical k-means on a sample of descriptors, kept beside the semantic masks
with their sha256, and searched for the nearest one to each descriptor (faiss's exact inner-product search).

Descriptors are means of L2-normalized features: their length says how uniform a segment's features are, not
what it shows, so they are compared by cosine: L2-normalized before training and before every search.
"""

from __future__ import annotations

import hashlib
import io

import faiss
import numpy as np

from ..store.dataset import OutputConflict
from ..store.location import Location, StorageError

CENTROIDS = "_centroids.npy"
"""The centroids' file under the output (`_`: dataset readers skip it)."""
RESTARTS = 5
"""k-means runs from different seedings, the best kept (faiss's `nredo`). k-means++ seeding still puts two centroids
in one class now and then (a third to a half of the runs on planted classes here), and Lloyd iterations never
separate them again; five runs made it rare (1 in 40 runs from 6 classes, none in 40 from 5), for 5 times the
training time."""


def train(sample: np.ndarray, classes: int, iterations: int, seed: int) -> np.ndarray:
    """The `(classes, dim)` float32 unit-norm centroids of spherical k-means over the rows of `sample`: the best of
    `RESTARTS` runs, each seeded by k-means++ (which merges fewer classes than faiss's default random seeding).

    Args:
        sample: float32 `(n, dim)`, C-contiguous; normalized in place (the caller's copy is not needed after).
        iterations: Lloyd iterations of each run.
    """
    faiss.normalize_L2(sample)
    kmeans = faiss.Kmeans(sample.shape[1], classes, niter=iterations, nredo=RESTARTS, seed=seed, spherical=True,
                          init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
                          # faiss would otherwise train on 256 points per class: the sample is already the bound.
                          max_points_per_centroid=-(-len(sample) // classes),
                          # Below 39 points per class faiss prints a warning the user can do nothing about: the
                          # sample is what the input has (`--sample`), and fewer points than classes are refused.
                          min_points_per_centroid=1)
    kmeans.train(sample)
    return kmeans.centroids


def save(location: Location, centroids: np.ndarray) -> str:
    """Write `centroids` as `CENTROIDS` under `location` in one piece; returns the file's sha256 (hex)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(centroids, dtype=np.float32), allow_pickle=False)
    data = buffer.getvalue()
    location.write(CENTROIDS, data)
    return hashlib.sha256(data).hexdigest()


def load(location: Location, sha256: str) -> np.ndarray:
    """The centroids `save` wrote under `location`, checked against the sha256 the manifest records.

    Raises:
        StorageError: the file cannot be read.
        OutputConflict: the file is not the one the manifest records: the masks there were made with other
            centroids.
    """
    try:
        data = location.read(CENTROIDS)
    except OSError as error:
        raise StorageError(f"{location.url}: cannot read {CENTROIDS} ({error})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise OutputConflict(f"{location.uri(CENTROIDS)} is not the file its manifest records (another sha256): "
                             "the masks there were made with other centroids; write to another --output")
    return np.load(io.BytesIO(data), allow_pickle=False)


class Nearest:
    """The nearest of a set of centroids to descriptors, by cosine."""

    def __init__(self, centroids: np.ndarray) -> None:
        """`centroids`: float32 `(K, dim)`, unit norm."""
        self.dim = centroids.shape[1]
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(np.ascontiguousarray(centroids, dtype=np.float32))

    def __call__(self, descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class ids (int64 `(n,)`) and cosine distances (float32 `(n,)`, 1 - cosine, in [0, 2]) of the `(n, dim)`
        descriptors (any float dtype, any length but 0)."""
        unit = np.array(descriptors, dtype=np.float32, order="C")
        faiss.normalize_L2(unit)
        cosine, ids = self._index.search(unit, 1)
        return ids[:, 0], np.clip(1 - cosine[:, 0], 0, 2)
