"""Training centroids with faiss, keeping them with their sha256, and the nearest centroid by cosine."""

import hashlib

import numpy as np
import pytest

from pipeline.clustering.centroids import CENTROIDS, Nearest, load, save, train
from pipeline.store.dataset import OutputConflict
from pipeline.store.location import Location, StorageError
from tests.pipeline.clustering.data import matched_accuracy


def planted(count: int, classes: int = 6, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` float32 descriptors of planted classes (their own directions, lengths 0.5..1, noise), the classes,
    and the unit directions."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    truth = rng.integers(0, classes, count)
    vectors = directions[truth] * rng.uniform(0.5, 1.0, (count, 1)) + 0.05 * rng.standard_normal((count, dim))
    return vectors.astype(np.float32), truth, directions


def test_spherical_kmeans_finds_the_planted_directions():
    vectors, truth, directions = planted(3_000)
    centroids = train(vectors.copy(), 6, iterations=20, seed=0)
    assert centroids.dtype == np.float32 and centroids.shape == (6, 32)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert (centroids @ directions.T).max(axis=0).min() > 0.99  # every planted direction has its centroid
    classes, _ = Nearest(centroids)(vectors)
    assert matched_accuracy(truth.tolist(), classes.tolist()) == 1.0


def test_a_small_sample_trains_without_faiss_warning_about_it(capfd):
    vectors, truth, _ = planted(60)
    classes, _ = Nearest(train(vectors.copy(), 6, iterations=20, seed=0))(vectors)
    assert matched_accuracy(truth.tolist(), classes.tolist()) == 1.0
    assert capfd.readouterr().err == "", "10 points per class is what the input has: nothing for the user to act on"


def test_training_is_reproducible_with_its_seed():
    vectors, _, _ = planted(2_000, classes=8, dim=16, seed=1)
    first = train(vectors.copy(), 8, iterations=5, seed=7)
    assert np.array_equal(first, train(vectors.copy(), 8, iterations=5, seed=7))


def test_the_nearest_centroid_is_by_cosine_whatever_the_length_of_the_descriptor():
    centroids = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    descriptors = np.array([[10, 1, 0], [0.1, 0.2, 0], [0, 0, -1], [0.5, 0.5, 0]], dtype=np.float16)
    classes, distances = Nearest(centroids)(descriptors)
    assert classes.tolist()[:3] == [0, 1, 0] and classes[3] in (0, 1)
    assert distances.dtype == np.float32
    assert np.allclose(distances, [1 - 10 / np.sqrt(101), 1 - 2 / np.sqrt(5), 1, 1 - np.sqrt(0.5)], atol=1e-3)


def test_centroids_are_kept_with_their_sha256_and_another_file_is_refused(tmp_path):
    location = Location(str(tmp_path))
    centroids = train(planted(500, classes=3, dim=8)[0], 3, iterations=5, seed=0)
    sha256 = save(location, centroids)
    assert sha256 == hashlib.sha256((tmp_path / CENTROIDS).read_bytes()).hexdigest()
    assert np.array_equal(load(location, sha256), centroids)
    save(location, centroids[::-1])
    with pytest.raises(OutputConflict, match=f"{CENTROIDS} is not the file its manifest records"):
        load(location, sha256)
    with pytest.raises(StorageError, match=f"cannot read {CENTROIDS}"):
        load(Location(str(tmp_path / "elsewhere")), sha256)
