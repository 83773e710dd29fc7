"""The labeling job on a real local Ray cluster, with real files on local disk and on a real S3 endpoint."""

import io
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import s3fs
from PIL import Image

from diffseg import DiffSegConfig, ModelLoadError
from pipeline.driver import LabelJob, run
from pipeline.output import OutputConflict, read_provenance
from pipeline.storage import Location
from tests.pipeline.data import (BOMB_LIMIT, bad_image_bytes, bad_images, good_images, parquet_bytes, read_output,
                                 tar_bytes, write_files)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


FAST = DiffSegConfig(resolution=256)
"""Processing at 256 px keeps the tiny model's work small; the pipeline does not depend on the size."""


def job(input: str, output: str, **overrides) -> LabelJob:
    settings = dict(model="tiny", config=FAST, num_actors=2, cpus_per_actor=1, shard_size=4, max_pixels=BOMB_LIMIT)
    return LabelJob(input=input, output=output, **{**settings, **overrides})


def assert_masks_match_images(rows: list[dict], images: dict[str, bytes]) -> None:
    """Every image exactly once; masks at the image's size; broken images are error rows with a reason."""
    assert sorted(row["image_id"] for row in rows) == sorted(images)
    for row in rows:
        name = row["image_id"].rsplit("/", 1)[-1]
        if name in bad_images():
            assert row["status"] == "error" and bad_images()[name] in row["error"]
            continue
        image = Image.open(io.BytesIO(images[row["image_id"]]))
        mask = np.asarray(Image.open(io.BytesIO(row["mask"])))
        assert row["status"] == "ok" and mask.shape == (image.height, image.width) == (row["height"], row["width"])
        assert row["num_segments"] == len(np.unique(mask)) >= 1


def test_a_local_folder_is_labeled_once_and_a_rerun_skips_it(tmp_path):
    images = {**good_images(9), **bad_image_bytes()}
    write_files(tmp_path / "in", images)
    summary = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (summary.images_ok, summary.images_failed) == (9, len(bad_images()))
    assert (summary.shards_written, summary.shards_skipped, summary.shards_failed) == (4, 0, 0)
    rows = read_output(str(tmp_path / "out"))
    assert_masks_match_images(rows, images)

    import datasets
    import ray

    assert ray.data.read_parquet(str(tmp_path / "out")).count() == len(images)
    loaded = datasets.load_dataset("parquet", data_files=f"{tmp_path}/out/**/*.parquet", split="train")
    assert sorted(loaded["image_id"]) == sorted(images)

    files = sorted((tmp_path / "out").glob("*.parquet"))
    provenance = read_provenance(Location(str(tmp_path / "out")), files[0].name)
    assert provenance["run_id"] == summary.run_id and provenance["model"] == "tiny"
    assert provenance["config_hash"] == FAST.config_hash() and provenance["config"]["resolution"] == 256
    assert len(provenance["shard"]["files"]) == 4 and provenance["shard"]["files"][0]["size"] > 0

    written = {f: f.stat().st_mtime_ns for f in files}
    again = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (again.shards_written, again.shards_skipped, again.images_ok) == (0, 4, 0)
    assert {f: f.stat().st_mtime_ns for f in sorted((tmp_path / "out").glob("*.parquet"))} == written


def test_a_folder_on_s3_is_labeled_to_s3(bucket):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    images = good_images(5)
    for name, data in images.items():
        fs.pipe_file(f"{bucket}/photos/{name}", data)
    summary = run(job(f"s3://{bucket}/photos", f"s3://{bucket}/masks", shard_size=3), progress=False)
    assert (summary.images_ok, summary.shards_written) == (5, 2)
    assert sorted(fs.ls(f"{bucket}/masks/_done")) == [f"{bucket}/masks/_done/part-0000{i}.json" for i in (0, 1)]
    rows = read_output(f"{bucket}/masks", filesystem=fs)
    assert_masks_match_images(rows, images)
    provenance = read_provenance(Location(f"s3://{bucket}/masks"), "part-00000.parquet")
    assert provenance["shard"]["files"][0]["uri"] == f"s3://{bucket}/photos/img-000.png"
    assert provenance["shard"]["files"][0]["etag"]
    assert "testing" not in str(provenance)  # no credentials


def test_webdataset_tars_are_labeled_per_tar(tmp_path):
    first, second = {**good_images(3), **bad_image_bytes()}, good_images(2, start=3)
    (tmp_path / "in" / "shards").mkdir(parents=True)
    (tmp_path / "in" / "shards" / "000.tar").write_bytes(tar_bytes(first))
    (tmp_path / "in" / "shards" / "001.tar").write_bytes(tar_bytes(second))
    summary = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (summary.shards_written, summary.images_ok, summary.images_failed) == (2, 5, len(bad_images()))
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.parquet")) == [
        "shards/000.parquet", "shards/001.parquet"]
    expected = {f"shards/00{i}.tar/{name}": data for i, files in enumerate((first, second))
                for name, data in files.items()}
    assert_masks_match_images(read_output(str(tmp_path / "out")), expected)


def test_parquet_shards_on_s3_are_labeled(bucket, tmp_path):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    first, second = good_images(4), good_images(3, start=4)
    fs.pipe_file(f"{bucket}/hf/train-0.parquet", parquet_bytes(first, "datasets"))
    fs.pipe_file(f"{bucket}/hf/train-1.parquet", parquet_bytes(second, "datasets"))
    summary = run(job(f"s3://{bucket}/hf", str(tmp_path / "out")), progress=False)
    assert (summary.shards_written, summary.images_ok) == (2, 7)
    expected = {f"train-{i}.parquet#{row}": data for i, files in enumerate((first, second))
                for row, data in enumerate(files.values())}
    assert_masks_match_images(read_output(str(tmp_path / "out")), expected)


def test_other_settings_never_mix_with_an_existing_output(tmp_path):
    write_files(tmp_path / "in", good_images(2))
    run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    changed = job(str(tmp_path / "in"), str(tmp_path / "out"), config=DiffSegConfig(resolution=256, kl_threshold=0.9))
    with pytest.raises(OutputConflict, match="different config, config_hash"):
        run(changed, progress=False)
    with pytest.raises(OutputConflict, match="different shard_size"):
        run(job(str(tmp_path / "in"), str(tmp_path / "out"), shard_size=1), progress=False)
    assert run(job(str(tmp_path / "in"), str(tmp_path / "out-tau-0.9"),
                   config=DiffSegConfig(resolution=256, kl_threshold=0.9)),
               progress=False).images_ok == 2


def test_an_actor_killed_mid_shard_is_restarted_and_its_shard_written_once(tmp_path):
    images = good_images(12)
    write_files(tmp_path / "in", images)
    killed = []

    def kill_first_busy_actor():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
            for line in listing.splitlines():
                pid, _, args = line.strip().partition(" ")
                if args.startswith("ray::LabelWorker.process"):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_busy_actor)
    killer.start()
    summary = run(job(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1, shard_size=3), progress=False)
    killer.join()
    assert killed, "no actor process was seen working on a shard"
    assert summary.retries >= 1 and summary.shards_failed == 0
    assert (summary.shards_written, summary.images_ok) == (4, 12)
    assert_masks_match_images(read_output(str(tmp_path / "out")), images)
    runs = {read_provenance(Location(str(tmp_path / "out")), f.name)["run_id"]
            for f in (tmp_path / "out").glob("*.parquet")}
    assert runs == {summary.run_id}


def test_a_shard_that_keeps_failing_is_reported_and_the_others_written(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(tar_bytes(good_images(2)))
    (tmp_path / "in" / "b.tar").write_bytes(b"\x00garbage" * 200)
    (tmp_path / "in" / "c.tar").write_bytes(tar_bytes(good_images(2, start=2)))
    summary = run(job(str(tmp_path / "in"), str(tmp_path / "out"), max_retries=1), progress=False)
    assert (summary.shards_written, summary.shards_failed, summary.retries) == (2, 1, 1)
    assert summary.failed[0]["shard"] == "b" and "Error" in summary.failed[0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == ["a.parquet", "c.parquet"]
    assert not (tmp_path / "out" / "_done" / "b.json").exists()


def test_a_model_that_cannot_be_loaded_stops_the_job_before_any_output(tmp_path):
    write_files(tmp_path / "in", good_images(1))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        run(job(str(tmp_path / "in"), str(tmp_path / "out"), model=str(tmp_path / "no-such-model")), progress=False)
    assert not (tmp_path / "out").exists()
