"""`jobs/cluster.py` as users run it: a subprocess, on a labeling output with planted descriptors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from pipeline.clustering.centroids import CENTROIDS
from pipeline.clustering.output import CLASS_SCHEMA
from pipeline.store.dataset import OutputDataset, decode_mask
from pipeline.store.location import Location
from synthetic.datasets import coco_stuff, regions_label
from tests.jobs.stores import NO_CREDENTIALS, without_credentials
from tests.pipeline.clustering.data import PlantedImage, random_images, write_output

ROOT = Path(__file__).resolve().parents[2]
CLUSTER, EVALUATE, LABEL = (str(ROOT / "jobs" / name) for name in ("cluster.py", "evaluate.py", "label.py"))
FAST = ["--num-actors", "1", "--cpus-per-actor", "1", "--memory-per-actor", "0", "--no-progress"]


def run(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, env=env)


def refused_at_once(*args: str, env: dict | None = None) -> str:
    """The one stderr line of a cluster run refused with exit status 2 before Ray started."""
    started = time.monotonic()
    result = run(CLUSTER, *args, "--classes", "3", "--no-progress", timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 20 and "Ray" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) == 1
    return result.stderr.strip()


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def classes_of(folder: Path) -> list[dict]:
    return list(OutputDataset(Location(str(folder)), CLASS_SCHEMA).rows(["image_id", "classes", "status"]))


@pytest.mark.parametrize("args, message", [
    (["--classes", "1"], "error: --classes must be in 2..255 (mask pixels are class ids, 255 is none), got 1"),
    (["--classes", "256"], "error: --classes must be in 2..255"),
    (["--classes", "many"], "error: argument --classes: invalid int value: 'many'"),
    (["--sample", "3"], "error: --sample must be at least 4, got 3"),
    (["--iterations", "0"], "error: --iterations must be at least 1, got 0"),
    (["--seed", "-1"], "error: --seed must be in 0..2147483647, got -1"),
    (["--storage-options", "{oops"], "error: --storage-options is not valid JSON"),
])
def test_bad_flags_are_one_line_and_exit_two(tmp_path, args, message):
    given = {"--classes": "4", **dict(zip(args[::2], args[1::2]))}
    result = run(CLUSTER, "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                 *[part for flag, value in given.items() for part in (flag, value)])
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_input_without_descriptors_is_one_line_and_exit_two(tmp_path):
    write_output(tmp_path / "masks", random_images(4, 3), shards=1, classes=3, descriptors=False)
    result = run(CLUSTER, "--input", str(tmp_path / "masks"), "--output", str(tmp_path / "out"), "--classes", "3")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {tmp_path / 'masks'}: its masks have no descriptors; label it with "
                                     "jobs/label.py --descriptors")
    assert not (tmp_path / "out").exists()


def test_an_input_that_is_not_a_labeling_output_is_one_line_and_exit_two(tmp_path):
    (tmp_path / "photos").mkdir()
    result = run(CLUSTER, "--input", str(tmp_path / "photos"), "--output", str(tmp_path / "out"), "--classes", "3")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'photos'}: not a labeling job's output (no _diffseg.json)"


def test_an_input_or_output_that_is_a_file_is_one_line_before_ray_starts(tmp_path):
    write_output(tmp_path / "masks", random_images(4, 3), shards=1, classes=3)
    (tmp_path / "file").write_text("")
    assert refused_at_once("--input", str(tmp_path / "masks"), "--output", str(tmp_path / "file")) == (
        f"error: --output {tmp_path / 'file'} is a file; give a folder (a new one, or an earlier run's output to go "
        "on with it)")
    assert refused_at_once("--input", str(tmp_path / "file"), "--output", str(tmp_path / "out")) == (
        f"error: --input {tmp_path / 'file'} is a file; give the folder of a labeling output made with --descriptors")


def test_s3_without_credentials_is_one_line_before_ray_starts(tmp_path, s3_endpoint):
    options = json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}})
    assert refused_at_once("--input", "s3://nope/masks", "--output", str(tmp_path / "out"), "--storage-options",
                           options, env=without_credentials(tmp_path)) == (
        f"error: --input s3://nope/masks: {NO_CREDENTIALS}")


@pytest.mark.integration
def test_a_run_prints_a_summary_and_another_k_into_its_output_is_refused(tmp_path, ray_cluster):
    write_output(tmp_path / "masks", random_images(60, 3), shards=3, classes=3)
    args = ["--input", str(tmp_path / "masks"), "--output", str(tmp_path / "classes"), *FAST]
    result = run(CLUSTER, *args, "--classes", "3")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert {key: summary[key] for key in ("images_ok", "images_failed", "shards_written", "shards_skipped",
                                          "shards_failed", "centroids", "failed")} == {
        "images_ok": 60, "images_failed": 3, "shards_written": 3, "shards_skipped": 0, "shards_failed": 0,
        "centroids": "trained", "failed": []}
    assert summary["output"] == f"file://{tmp_path / 'classes'}" and summary["seconds"] > 0
    # Read as any labeling output is: the bookkeeping (manifest, markers, centroids) is skipped.
    classes = ray.data.read_parquet(str(tmp_path / "classes"))
    assert classes.count() == 63 and "classes" in classes.schema().names

    refused = run(CLUSTER, *args, "--classes", "4")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"error: {tmp_path / 'classes'} already holds masks made with a different "
                                      f"classes (see file://{tmp_path / 'classes' / '_diffseg.json'}); write to "
                                      "another --output")


@pytest.mark.integration
def test_a_killed_driver_is_recovered_by_running_the_command_again(tmp_path, ray_cluster):
    images = random_images(120, 4, size=(320, 240))  # masks large enough for a shard to take a moment
    write_output(tmp_path / "masks", images, shards=30, classes=4, errors_per_shard=0)
    args = ["--input", str(tmp_path / "masks"), "--output", str(tmp_path / "classes"), "--classes", "4", *FAST]
    driver = subprocess.Popen([sys.executable, CLUSTER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / "classes" / "_done"
    deadline = time.monotonic() + 180
    while not (done.exists() and any(done.iterdir())) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = len(list(done.iterdir()))
    assert 1 <= finished < 30, "the driver was not killed mid-job"
    centroids = (tmp_path / "classes" / CENTROIDS).read_bytes()

    result = run(CLUSTER, *args)
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["centroids"] == "reused" and (tmp_path / "classes" / CENTROIDS).read_bytes() == centroids
    assert summary["shards_skipped"] >= finished and summary["shards_skipped"] + summary["shards_written"] == 30
    rows = classes_of(tmp_path / "classes")
    assert sorted(row["image_id"] for row in rows) == sorted(image.image_id for image in images)
    assert all(row["status"] == "ok" for row in rows)


def coco_masks(ids: list[str], sizes: list[tuple[int, int]]) -> list[PlantedImage]:
    """Masks of the synthetic COCO-Stuff images (`synthetic.datasets.coco_stuff`) whose segments are its label bands
    (person, sky, grass, unlabeled), with their ids shuffled in each image; the planted class of a segment is its
    band."""
    rng = np.random.default_rng(0)
    images = []
    for i, (image_id, (width, height)) in enumerate(zip(ids, sizes)):
        band = regions_label(width, height, (0, 1, 2, 3), seed=i)
        order = rng.permutation(4)
        images.append(PlantedImage(f"{image_id}.jpg", order[band], np.argsort(order).tolist()))
    return images


@pytest.mark.integration
def test_the_pseudo_classes_score_under_dataset_matching_where_per_image_ids_do_not(tmp_path, ray_cluster):
    sizes = [(96, 64), (64, 80), (72, 72), (80, 64)] * 5
    ids = coco_stuff(tmp_path / "coco", sizes=tuple(sizes))
    write_output(tmp_path / "masks", coco_masks(ids, sizes), shards=4, classes=4, errors_per_shard=0)
    clustered = run(CLUSTER, "--input", str(tmp_path / "masks"), "--output", str(tmp_path / "classes"),
                    "--classes", "4", *FAST)
    assert clustered.returncode == 0, clustered.stderr

    def score(predictions: Path) -> dict:
        scored = run(EVALUATE, "--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--predictions",
                     str(predictions), "--protocol", "dataset", "--scores", str(tmp_path / f"{predictions.name}.csv"),
                     "--no-progress")
        assert scored.returncode == 0, scored.stderr
        summary = summary_of(scored)
        assert summary["protocol"] == "dataset" and summary["images"] == 20 and summary["failed"] == 0
        (result,) = summary["results"].values()
        return result

    classes, segments = score(tmp_path / "classes"), score(tmp_path / "masks")
    assert classes["accuracy"] == classes["miou"] == 1.0
    assert segments["accuracy"] < 0.8


@pytest.mark.integration
def test_a_labeling_run_with_descriptors_is_clustered(tmp_path, ray_cluster):
    labeled = run(LABEL, "--input", str(ROOT / "samples"), "--output", str(tmp_path / "masks"), "--model", "tiny",
                  "--resolution", "256", "--descriptors", *FAST)
    assert labeled.returncode == 0, labeled.stderr
    result = run(CLUSTER, "--input", str(tmp_path / "masks"), "--output", str(tmp_path / "classes"), "--classes", "2",
                 *FAST)
    assert result.returncode == 0, result.stderr
    assert summary_of(result)["images_ok"] == 4
    rows = list(OutputDataset(Location(str(tmp_path / "classes")), CLASS_SCHEMA).rows(["mask", "classes"]))
    assert all(set(np.unique(decode_mask(row["mask"]))) <= set(row["classes"]) for row in rows)
