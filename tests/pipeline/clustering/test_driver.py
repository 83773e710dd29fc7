"""The pseudo-class job's driver, in-process: planning without Ray, and whole runs on a real local Ray cluster."""

import hashlib
import json

import numpy as np
import pytest

from pipeline.clustering.centroids import CENTROIDS
from pipeline.clustering.driver import execute, needs_ray, plan
from pipeline.clustering.job import DEFAULT_SAMPLE, ClusterJob
from pipeline.clustering.output import CLASS_SCHEMA, NONE
from pipeline.execution.capacity import JobError
from pipeline.store.dataset import MANIFEST, OutputConflict, OutputDataset, decode_mask
from pipeline.store.inputs import InputError
from pipeline.store.location import Location, StorageError
from tests.pipeline.clustering.data import matched_accuracy, random_images, write_output

CLASSES = 5


def job(folder, **overrides) -> ClusterJob:
    """Clustering `folder`/in into `folder`/out (a path or any fsspec URL)."""
    settings = dict(classes=CLASSES, num_actors=2, cpus_per_actor=1, memory_per_actor=0, retry_delay=0.1)
    return ClusterJob(input=f"{folder}/in", output=f"{folder}/out", **{**settings, **overrides})


def read_classes(tmp_path) -> list[dict]:
    return list(OutputDataset(Location(str(tmp_path / "out")), CLASS_SCHEMA).rows(CLASS_SCHEMA.names))


def test_an_input_without_descriptors_is_refused(tmp_path):
    write_output(tmp_path / "in", random_images(4, CLASSES), shards=1, classes=CLASSES, descriptors=False)
    with pytest.raises(InputError, match="its masks have no descriptors; label it with jobs/label.py --descriptors"):
        plan(job(tmp_path))


def test_a_folder_that_is_not_a_labeling_output_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(StorageError, match="not a labeling job's output"):
        plan(job(tmp_path))


@pytest.mark.integration
def test_planted_classes_get_the_same_id_in_every_image(tmp_path, ray_cluster):
    images = random_images(240, CLASSES, seed=1)
    write_output(tmp_path / "in", images, shards=4, classes=CLASSES, errors_per_shard=1)
    summary = execute(plan(job(tmp_path)), progress=False)
    segments = sum(len(image.classes) for image in images)
    assert (summary.shards_written, summary.shards_failed, summary.images_ok, summary.images_failed) == (4, 0, 240, 4)
    assert summary.centroids == "trained" and summary.sample == segments

    rows = {row["image_id"]: row for row in read_classes(tmp_path)}
    assert len(rows) == 244
    planted, found = [], []
    for image in images:
        row = rows[image.image_id]
        planted += image.classes
        found += row["classes"]
        # The semantic mask: each pixel is the class of its segment; every pixel has one.
        semantic = decode_mask(row["mask"])
        assert np.array_equal(semantic, np.asarray(row["classes"])[image.labels]) and NONE not in semantic
        assert all(0 <= distance <= 0.2 for distance in row["distances"])
    assert matched_accuracy(planted, found) >= 0.95
    assert all(row["error"] == "cannot decode image" for row in rows.values() if row["status"] == "error")
    assert sorted(failure["image_id"] for failure in summary.failed_images) == sorted(
        image_id for image_id, row in rows.items() if row["status"] == "error")
    listed = (tmp_path / "out" / "_runs" / f"{summary.run_id}.failures.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in listed] == summary.failed_images

    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    centroids = np.load(tmp_path / "out" / CENTROIDS)
    assert centroids.shape == (CLASSES, 64) and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert manifest["centroids_sha256"] == hashlib.sha256((tmp_path / "out" / CENTROIDS).read_bytes()).hexdigest()
    assert {key: manifest[key] for key in ("classes", "sample", "sample_used", "seed", "iterations", "dim")} == {
        "classes": CLASSES, "sample": DEFAULT_SAMPLE, "sample_used": segments, "seed": 0, "iterations": 20, "dim": 64}
    assert manifest["config"] == manifest["source"]["config"] and manifest["source"]["descriptors"] is True
    assert manifest["input"] == f"file://{tmp_path}/in" and manifest["faiss"]


@pytest.mark.integration
def test_a_rerun_reuses_the_centroids_and_writes_only_the_missing_shards(tmp_path, ray_cluster):
    write_output(tmp_path / "in", random_images(200, CLASSES), shards=4, classes=CLASSES)
    first = execute(plan(job(tmp_path, sample=300, seed=3)), progress=False)
    assert first.sample == 300 and first.centroids == "trained"
    centroids = (tmp_path / "out" / CENTROIDS).read_bytes()
    before = {row["image_id"]: row for row in read_classes(tmp_path)}
    (tmp_path / "out" / "_done" / "part-00002.json").unlink()  # as if the first run had stopped before it
    (tmp_path / "out" / "part-00002.parquet").unlink()

    planned = plan(job(tmp_path, sample=300, seed=3))
    assert planned.todo == ["part-00002"] and needs_ray(planned)
    again = execute(planned, progress=False)
    assert (again.centroids, again.shards_written, again.shards_skipped) == ("reused", 1, 3)
    assert again.centroids_sha256 == first.centroids_sha256 and again.sample == 300
    assert (tmp_path / "out" / CENTROIDS).read_bytes() == centroids
    after = {row["image_id"]: row for row in read_classes(tmp_path)}
    assert after.keys() == before.keys()
    assert all(after[key]["classes"] == before[key]["classes"] for key in after)

    finished = plan(job(tmp_path, sample=300, seed=3))
    assert not needs_ray(finished) and execute(finished, progress=False).shards_skipped == 4
    for other in (dict(classes=CLASSES + 1), dict(sample=301, seed=3), dict(sample=300, seed=4)):
        with pytest.raises(OutputConflict, match="already holds masks made with a different"):
            plan(job(tmp_path, **{"sample": 300, "seed": 3, **other}))


@pytest.mark.integration
def test_an_input_without_a_usable_descriptor_is_refused_and_nothing_is_written(tmp_path, ray_cluster):
    write_output(tmp_path / "in", [], shards=2, classes=CLASSES, errors_per_shard=3)
    with pytest.raises(InputError, match="no usable descriptor"):
        execute(plan(job(tmp_path)), progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.integration
def test_a_shard_that_cannot_be_read_fails_alone(tmp_path, ray_cluster):
    write_output(tmp_path / "in", random_images(200, CLASSES), shards=4, classes=CLASSES)
    (tmp_path / "in" / "part-00001.parquet").write_bytes(b"not parquet")
    summary = execute(plan(job(tmp_path, max_retries=1)), progress=False)
    # Counted without it (one retry), and its semantic masks not written (one retry): the others are.
    assert (summary.shards_written, summary.shards_failed, summary.retries) == (3, 1, 2)
    assert summary.failed[0]["shard"] == "part-00001" and "Parquet" in summary.failed[0]["error"]
    assert not (tmp_path / "out" / "part-00001.parquet").exists()
    assert len(read_classes(tmp_path)) == 3 * (50 + 1)


@pytest.mark.integration
def test_more_actors_than_the_cluster_hosts_are_refused_at_once(tmp_path, ray_cluster):
    write_output(tmp_path / "in", random_images(10, CLASSES), shards=2, classes=CLASSES)
    with pytest.raises(JobError, match=r"^--num-actors 100: the cluster can host \d actor\(s\) of 1 CPU\(s\), 0 GPU"):
        execute(plan(job(tmp_path, num_actors=100)), progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.integration
def test_input_and_output_on_an_object_store(bucket, ray_cluster):
    write_output(f"s3://{bucket}/in", random_images(40, CLASSES), shards=2, classes=CLASSES)
    summary = execute(plan(job(f"s3://{bucket}")), progress=False)
    assert (summary.shards_written, summary.images_ok, summary.output) == (2, 40, f"s3://{bucket}/out")
    classes = OutputDataset(Location(f"s3://{bucket}/out"), CLASS_SCHEMA)
    assert classes.done() == {"part-00000", "part-00001"} and len(classes.column("image_id")) == 42
    assert classes.provenance("part-00000.parquet")["shard"]["input"] == f"s3://{bucket}/in/part-00000.parquet"
