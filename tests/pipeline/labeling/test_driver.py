"""The labeling job on a real local Ray cluster, with real files on local disk and on a real S3 endpoint."""

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import threading
import time

import fsspec
import numpy as np
import pytest
import s3fs
from PIL import Image

from diffseg import DiffSegConfig, ModelLoadError
from pipeline.execution import capacity, executor
from pipeline.execution.capacity import Actors, ActorShape, JobError
from pipeline.execution.command import FAILED_NAMED
from pipeline.labeling import driver
from pipeline.labeling.driver import run
from pipeline.labeling.job import LabelJob
from pipeline.labeling.worker import LabelWorker
from pipeline.store.dataset import OutputConflict, OutputDataset, decode_mask
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.outage import Forwarder
from tests.pipeline.labeling.data import (
    BOMB_LIMIT,
    bad_image_bytes,
    bad_images,
    encoded,
    good_images,
    parquet_bytes,
    read_output,
    tar_bytes,
    write_files,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


FAST = DiffSegConfig(resolution=256)
"""Processing at 256 px keeps the tiny model's work small; the pipeline does not depend on the size."""


def job(input: str, output: str, **overrides) -> LabelJob:
    settings = dict(model="tiny", config=FAST, num_actors=2, cpus_per_actor=1, shard_size=4, max_pixels=BOMB_LIMIT,
                    retry_delay=0.2)
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
        mask = decode_mask(row["mask"])
        assert row["status"] == "ok" and mask.shape == (image.height, image.width) == (row["height"], row["width"])
        assert row["num_segments"] == len(np.unique(mask)) >= 1


def test_a_local_folder_is_labeled_once_and_a_rerun_skips_it(tmp_path):
    images = {**good_images(8), "img-gif.gif": encoded(photo(72, 48, seed=9), "GIF"), **bad_image_bytes()}
    write_files(tmp_path / "in", {**images, "notes.txt": b"not an image", "sub/.DS_Store": b""})
    summary = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (summary.images_ok, summary.images_failed) == (9, len(bad_images()))
    assert (summary.shards_written, summary.shards_skipped, summary.shards_failed) == (4, 0, 0)
    assert summary.files_ignored == 2
    rows = read_output(str(tmp_path / "out"))
    assert_masks_match_images(rows, images)

    import datasets
    import ray

    assert ray.data.read_parquet(str(tmp_path / "out")).count() == len(images)
    loaded = datasets.load_dataset("parquet", data_files=f"{tmp_path}/out/**/*.parquet", split="train")
    assert sorted(loaded["image_id"]) == sorted(images)

    files = sorted((tmp_path / "out").glob("*.parquet"))
    provenance = OutputDataset(Location(str(tmp_path / "out"))).provenance(files[0].name)
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
    rows = read_output(f"s3://{bucket}/masks")
    assert_masks_match_images(rows, images)
    provenance = OutputDataset(Location(f"s3://{bucket}/masks")).provenance("part-00000.parquet")
    assert provenance["shard"]["files"][0]["uri"] == f"s3://{bucket}/photos/img-000.png"
    assert provenance["shard"]["files"][0]["etag"]
    assert "testing" not in str(provenance)  # no credentials


def test_an_object_store_down_mid_job_costs_retries_not_images(bucket, s3_endpoint):
    """S3 (a real endpoint behind a loopback forwarder) refuses every connection for 8 s while shards are being
    read and written: the shards it hit are retried after a delay, and no image is recorded as bad."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    images = good_images(16)
    for name, data in images.items():
        fs.pipe_file(f"{bucket}/photos/{name}", data)
    forwarder = Forwarder(int(s3_endpoint.rsplit(":", 1)[1]))
    forwarder.up()
    outage = []

    def take_it_down_after_the_first_shard():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not fs.exists(f"{bucket}/masks/_done/part-00000.json"):
            fs.invalidate_cache()
            time.sleep(0.05)
        forwarder.down()
        outage.append(sorted(fs.ls(f"{bucket}/masks/_done", refresh=True)))
        time.sleep(8)
        forwarder.up()

    # botocore's own retries, on top of s3fs's (about 2 s), could outlast the outage and hide it from the job;
    # without them every request made during it fails, and the job's retries are what is tested.
    clients_giving_up_at_once = {"client_kwargs": {"endpoint_url": forwarder.url},
                                 "config_kwargs": {"retries": {"max_attempts": 1}}}
    controller = threading.Thread(target=take_it_down_after_the_first_shard)
    controller.start()
    try:
        summary = run(job(f"s3://{bucket}/photos", f"s3://{bucket}/masks", num_actors=1, shard_size=1, retry_delay=1,
                          storage_options=clients_giving_up_at_once), progress=False)
    finally:
        controller.join()
        forwarder.down()
    assert outage and len(outage[0]) < 16, "the outage began before the job ended"
    assert summary.retries >= 1 and (summary.shards_failed, summary.images_failed) == (0, 0)
    assert (summary.images_ok, summary.shards_written) == (16, 16)
    rows = read_output(f"s3://{bucket}/masks")
    assert all(row["status"] == "ok" for row in rows)
    assert_masks_match_images(rows, images)


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
    runs = {OutputDataset(Location(str(tmp_path / "out"))).provenance(f.name)["run_id"]
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


def test_the_summary_names_the_first_failed_images_and_a_file_lists_them_all(tmp_path):
    write_files(tmp_path / "in", {**good_images(3), **bad_image_bytes(), "notes.txt": b"not an image"})
    summary = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (summary.images_ok, summary.images_failed, summary.files_ignored) == (3, len(bad_images()), 1)
    assert summary.ignored_files == ["notes.txt"]
    assert len(summary.failed_images) == FAILED_NAMED < len(bad_images())
    for failure in summary.failed_images:
        name = failure["image_id"]
        assert bad_images()[name] in failure["error"] and failure["source_uri"].endswith(f"/in/{name}")
        assert (tmp_path / "out" / f"{failure['shard']}.parquet").exists()
    first = summary.failed_images[0]
    assert summary.failures_clause() == (f"; failed images listed in {summary.failed_images_file}, the first: "
                                         f"{first['image_id']}: {first['error']}")
    assert summary.failed_images_file == Location(str(tmp_path / "out")).uri(f"_runs/{summary.run_id}.failures.jsonl")
    listed = [json.loads(line) for line in (tmp_path / "out" / "_runs" / f"{summary.run_id}.failures.jsonl").open()]
    assert {failure["image_id"]: failure["error"] for failure in listed} == {
        row["image_id"]: row["error"] for row in read_output(str(tmp_path / "out")) if row["status"] == "error"}
    assert listed[:FAILED_NAMED] == summary.failed_images, "the first ones named, in the order they were written"

    write_files(tmp_path / "in", good_images(2, start=3))
    again = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (again.images_ok, again.failed_images, again.failed_images_file, again.failures_clause()) == (2, [], "", "")
    assert [path.name for path in (tmp_path / "out" / "_runs").glob("*.failures.jsonl")] == [
        f"{summary.run_id}.failures.jsonl"]


def test_a_model_that_cannot_be_loaded_stops_the_job_before_any_output(tmp_path):
    write_files(tmp_path / "in", good_images(1))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        run(job(str(tmp_path / "in"), str(tmp_path / "out"), model=str(tmp_path / "no-such-model")), progress=False)
    assert not (tmp_path / "out").exists()


def test_actors_waiting_for_an_autoscaler_are_reported_until_the_startup_timeout(tmp_path, monkeypatch, capfd):
    write_files(tmp_path / "in", good_images(2))
    monkeypatch.setattr(executor, "REPORT_EVERY", 1.0)
    started = time.monotonic()
    with pytest.raises(JobError, match=r"^the cluster did not start 1 actor\(s\) of 1 CPU\(s\), 1 GPU\(s\) and 2 GiB "
                                       r"memory within --startup-timeout 4 s \(1 not placed; node [^:]+: 8 CPU, "
                                       r"0 GPU, .*; free: .*\)$"):
        run(job(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1, gpus_per_actor=1, startup_timeout=4),
            progress=False)
    assert time.monotonic() - started >= 4
    waiting = [line for line in capfd.readouterr().err.splitlines() if line.startswith("waiting for the cluster")]
    assert len(waiting) >= 2, "a line at least every REPORT_EVERY seconds"
    assert waiting[0].startswith("waiting for the cluster: 1 actor(s) not placed yet (1), each needs 1 CPU(s), "
                                 "1 GPU(s) and 2 GiB memory; node ")
    assert ": 8 CPU, 0 GPU" in waiting[0]
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_actors_that_cannot_be_placed_although_they_fitted_are_a_bounded_wait(tmp_path, monkeypatch):
    """Other work may take the room between the check and the start; the job says so instead of hanging."""
    write_files(tmp_path / "in", good_images(1))
    monkeypatch.setattr(capacity, "PLACEMENT_TIMEOUT", 2.0)
    monkeypatch.setattr(driver, "actors_for", lambda job, shards: Actors(1, ActorShape(64, 0, 0)))
    with pytest.raises(JobError, match=r"^1 of 1 actor\(s\) of 64 CPU\(s\), 0 GPU\(s\) and 0 GiB memory were not "
                                       r"placed within 2 s although the cluster had room"):
        run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)


class SlowLoadingWorker(LabelWorker):
    """A replica whose model takes a few seconds to load, as a first download of real weights would."""

    def load(self):
        time.sleep(4)
        return super().load()


def test_a_replica_still_loading_its_model_says_so(tmp_path, monkeypatch, capfd):
    write_files(tmp_path / "in", good_images(2))
    monkeypatch.setattr(executor, "REPORT_EVERY", 1.0)
    monkeypatch.setattr(driver, "LOADING_REPORT_AFTER", 1.0)
    summary = driver.execute(driver.plan(job(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1)),
                             progress=False, worker=SlowLoadingWorker)
    assert summary.images_ok == 2
    assert "actor(s) 1 still loading the model after" in capfd.readouterr().err


class SlowWorker(LabelWorker):
    """A replica that takes seconds per shard, as a large shard on a slow model does."""

    def process(self, shard, run_id):
        time.sleep(3)
        return super().process(shard, run_id)


def test_a_line_comes_while_no_shard_finishes(tmp_path, monkeypatch, capfd):
    write_files(tmp_path / "in", good_images(1))
    monkeypatch.setattr(executor, "REPORT_EVERY", 1.0)
    summary = driver.execute(driver.plan(job(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1)),
                             progress=False, worker=SlowWorker)
    assert summary.images_ok == 1
    assert "0/1 images, 0.00 image/s; 1 shard(s) in progress on 1 actor(s), 0 of 1 done, 0 waiting to be retried; " \
           "no image finished in the last 1 s" in capfd.readouterr().err


class SlowModel:
    """The tiny model, taking `SECONDS` per batch of one image, as a full-size model on CPU does."""

    SECONDS = 1.2
    """More than `executor.PUSH_EVERY`: every image done is reported."""

    def __init__(self, segmenter, dies_at: int | None) -> None:
        self.segmenter, self.dies_at, self.batches = segmenter, dies_at, 0

    def __getattr__(self, name):
        return getattr(self.segmenter, name)

    def forward_batch(self, *args, **kwargs):
        self.batches += 1
        if self.batches == self.dies_at:
            time.sleep(2 * SlowModel.SECONDS)  # the images done so far reach the driver
            os._exit(1)
        time.sleep(SlowModel.SECONDS)
        return self.segmenter.forward_batch(*args, **kwargs)


class SlowModelWorker(LabelWorker):
    """A replica of `SlowModel`s; the first one dies at its fourth batch when the file `dies` is beside the
    output (it is removed then, so the restarted replica lives)."""

    def build_segmenter(self):
        dies = os.path.join(os.path.dirname(self.placement.destination.root), "dies")
        dying = os.path.exists(dies)
        if dying:
            os.remove(dies)
        return SlowModel(super().build_segmenter(), dies_at=4 if dying else None)


def image_counts(err: str, total: int) -> list[int]:
    """The images done that each progress line of a job over `total` images says, in order."""
    return [int(found[1]) for found in re.finditer(rf"^(\d+)/{total} images, ", err, re.MULTILINE)]


def test_progress_counts_images_while_the_one_shard_runs(tmp_path, monkeypatch, capfd):
    write_files(tmp_path / "in", good_images(5))
    monkeypatch.setattr(executor, "REPORT_EVERY", 1.0)
    summary = driver.execute(driver.plan(job(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1,
                                             shard_size=5)), progress=False, worker=SlowModelWorker)
    assert summary.images_ok == 5
    err = capfd.readouterr().err
    done = image_counts(err, 5)
    assert any(0 < count < 5 for count in done), f"no count while the shard ran: {err}"
    assert done == sorted(done)
    assert re.search(r"^[1-4]/5 images, \d+\.\d\d image/s, \d\d:\d\d left; "
                     r"1 shard\(s\) in progress on 1 actor\(s\), 0 of 1 done", err, re.MULTILINE)
    assert "no shard finished" not in err


def test_a_shard_retried_after_its_actor_died_counts_its_images_once(tmp_path, monkeypatch, capfd):
    write_files(tmp_path / "in", good_images(5))
    (tmp_path / "dies").touch()
    monkeypatch.setattr(executor, "REPORT_EVERY", 1.0)
    summary = driver.execute(driver.plan(job(str(tmp_path / "in"), str(tmp_path / "out"), num_actors=1,
                                             shard_size=5)), progress=False, worker=SlowModelWorker)
    assert (summary.images_ok, summary.retries) == (5, 1)
    before, retried, after = capfd.readouterr().err.partition("shard part-00000 will be retried")
    assert retried, "the actor did not die"
    lost = max(image_counts(before, 5))
    assert 0 < lost <= 3, "the dead attempt's images were counted while it ran"
    assert max(image_counts(after, 5)) <= 5 and min(image_counts(after, 5)) < lost, \
        "the retry counts its own images, not on top of the dead attempt's"


def counts(summary: driver.Summary) -> dict[str, int]:
    """What a run found in the input and did, in numbers."""
    return {name: getattr(summary, name) for name in ("files_new", "files_changed", "files_vanished",
                                                     "files_relabeled", "shards_written", "shards_skipped")}


def changes_of(summary: driver.Summary) -> dict:
    """The `_changes/RUN_ID.json` listing the summary names, read back from where it was written."""
    fs, path = fsspec.core.url_to_fs(summary.changes)
    return json.loads(fs.cat_file(path))


def test_a_grown_folder_gets_exactly_its_new_files_labeled_in_new_shards(tmp_path):
    """New files whose names sort before, between and after the labeled ones: each image once, finished shards
    untouched (shards are no longer slices of a listing that shifts)."""
    first = good_images(6)
    write_files(tmp_path / "in", first)
    run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    written = {f: f.stat().st_mtime_ns for f in (tmp_path / "out").glob("*.parquet")}
    added = {"a-before.png": encoded(photo(40, 30, seed=20)), "img-002b.png": encoded(photo(30, 40, seed=21)),
             "img-004b.jpg": encoded(photo(48, 32, seed=22), "JPEG"), "z-after.png": encoded(photo(32, 32, seed=23))}
    write_files(tmp_path / "in", added)
    grown = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert counts(grown) == {"files_new": 4, "files_changed": 0, "files_vanished": 0, "files_relabeled": 0,
                             "shards_written": 1, "shards_skipped": 2}
    assert (grown.images_ok, grown.changes) == (4, "")
    assert {f: f.stat().st_mtime_ns for f in written} == written
    assert sorted(f.name for f in (tmp_path / "out").glob("*.parquet")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert_masks_match_images(read_output(str(tmp_path / "out")), {**first, **added})
    again = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (again.files_new, again.shards_written, again.shards_skipped) == (0, 0, 3)


def test_a_trial_run_labels_the_first_files_and_a_full_run_the_rest_each_once(tmp_path, monkeypatch):
    """`max_files`: the first files in key order, the listing stopped there (nothing after them is listed, nor
    counted as vanished); the next run without it takes the rest as new files."""
    for folder in ("a", "b", "c"):
        write_files(tmp_path / "in" / folder, good_images(2))
    images = {f"{folder}/{name}": data for folder in ("a", "b", "c") for name, data in good_images(2).items()}
    source = Location(str(tmp_path / "in"))
    listed, ls = [], source.fs.ls
    monkeypatch.setattr(source.fs, "ls", lambda path, **options: listed.append(path) or ls(path, **options))
    trial = run(job(str(tmp_path / "in"), str(tmp_path / "out"), max_files=3, shard_size=2), progress=False)
    assert (trial.files_new, trial.max_files_reached, trial.images_ok, trial.shards_written) == (3, True, 3, 2)
    assert str(tmp_path / "in" / "c") not in listed, "the listing stopped at the third file"
    rest = run(job(str(tmp_path / "in"), str(tmp_path / "out"), shard_size=2), progress=False)
    assert (rest.files_new, rest.max_files_reached, rest.files_vanished, rest.shards_skipped) == (3, False, 0, 2)
    assert_masks_match_images(read_output(str(tmp_path / "out")), images)


def test_the_first_shard_is_planned_before_the_listing_ends_and_the_counts_come_once_it_ended(tmp_path,
                                                                                               monkeypatch):
    for folder in ("a", "b", "c"):
        write_files(tmp_path / "in" / folder, good_images(2))
    write_files(tmp_path / "in", {"notes.txt": b"listed last"})
    source = Location(str(tmp_path / "in"))
    listed, ls = [], source.fs.ls
    monkeypatch.setattr(source.fs, "ls", lambda path, **options: listed.append(path) or ls(path, **options))
    planned = driver.plan(job(str(tmp_path / "in"), str(tmp_path / "out"), shard_size=2))
    inputs = [path for path in listed if path.startswith(str(tmp_path / "in"))]
    assert planned.todo and inputs == [str(tmp_path / "in"), str(tmp_path / "in" / "a")]
    assert not planned.todo.done and planned.todo.ahead(2) == 2, "read ahead only as far as asked"
    assert [shard.name for shard in planned.todo] == ["part-00000", "part-00001", "part-00002"]
    assert planned.todo.done and planned.todo.given == 3 and planned.todo.next() is None
    assert (planned.listing.ignored, planned.comparison.new, planned.skipped) == (1, 6, 0)


def test_a_changed_and_a_deleted_file_on_s3_are_reported_and_the_changed_one_relabeled_when_asked(bucket):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    images = good_images(6)
    for name, data in images.items():
        fs.pipe_file(f"{bucket}/photos/{name}", data)
    labeling = job(f"s3://{bucket}/photos", f"s3://{bucket}/masks", shard_size=3)
    run(labeling, progress=False)
    changed = encoded(photo(56, 40, seed=30))  # another size: its mask shows which version was labeled
    fs.pipe_file(f"{bucket}/photos/img-001.jpg", changed)
    fs.rm(f"{bucket}/photos/img-004.png")

    reported = run(labeling, progress=False)
    assert counts(reported) == {"files_new": 0, "files_changed": 1, "files_vanished": 1, "files_relabeled": 0,
                                "shards_written": 0, "shards_skipped": 2}
    assert reported.changes == f"s3://{bucket}/masks/_changes/{reported.run_id}.json"
    listing = changes_of(reported)
    assert [(c["key"], c["shard"], c["recorded"]["etag"] != c["now"]["etag"]) for c in listing["changed"]] == [
        ("img-001.jpg", "part-00000", True)]
    assert [(v["key"], v["shard"]) for v in listing["vanished"]] == [("img-004.png", "part-00001")]
    assert listing["relabeled"] is False
    assert_masks_match_images(read_output(f"s3://{bucket}/masks"), images)  # the rows made before stay

    relabeled = run(dataclasses.replace(labeling, relabel_changed=True), progress=False)
    assert counts(relabeled) == {"files_new": 0, "files_changed": 1, "files_vanished": 1, "files_relabeled": 1,
                                 "shards_written": 1, "shards_skipped": 1}
    assert (relabeled.images_ok, changes_of(relabeled)["relabeled"]) == (3, True)
    assert_masks_match_images(read_output(f"s3://{bucket}/masks"), {**images, "img-001.jpg": changed})
    settled = run(labeling, progress=False)
    assert (settled.files_changed, settled.files_vanished, settled.shards_written) == (0, 1, 0)


def test_a_new_tar_is_a_new_shard_and_a_rewritten_tar_is_reported_then_relabeled_when_asked(tmp_path):
    """A tar rewritten at the same size (tars are padded to 10 KiB blocks) is still a change on a local disk."""
    def bitmaps(seed: int) -> dict[str, bytes]:  # BMP: the same bytes whatever the picture, for a same-size tar
        return {f"img-b{i}.bmp": encoded(photo(48, 32, seed=seed + i), "BMP") for i in range(2)}

    first, second, third = good_images(2), bitmaps(0), good_images(2, start=4)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "000.tar").write_bytes(tar_bytes(first))
    (tmp_path / "in" / "001.tar").write_bytes(tar_bytes(second))
    labeling = job(str(tmp_path / "in"), str(tmp_path / "out"))
    run(labeling, progress=False)
    rewritten = bitmaps(40)
    os.utime(tmp_path / "in" / "001.tar", ns=(0, 10**9))  # the rewrite below then has another mtime, however coarse
    old_size = (tmp_path / "in" / "001.tar").stat().st_size
    (tmp_path / "in" / "001.tar").write_bytes(tar_bytes(rewritten))
    assert (tmp_path / "in" / "001.tar").stat().st_size == old_size
    (tmp_path / "in" / "002.tar").write_bytes(tar_bytes(third))

    grown = run(labeling, progress=False)
    assert counts(grown) == {"files_new": 1, "files_changed": 1, "files_vanished": 0, "files_relabeled": 0,
                             "shards_written": 1, "shards_skipped": 2}
    assert [(c["key"], c["shard"]) for c in changes_of(grown)["changed"]] == [("001.tar", "001")]
    members = {f"00{i}.tar/{name}": data for i, files in enumerate((first, second, third)) for name, data in
               files.items()}
    assert_masks_match_images(read_output(str(tmp_path / "out")), members)

    relabeled = run(dataclasses.replace(labeling, relabel_changed=True), progress=False)
    assert counts(relabeled) == {"files_new": 0, "files_changed": 1, "files_vanished": 0, "files_relabeled": 1,
                                 "shards_written": 1, "shards_skipped": 2}
    assert_masks_match_images(read_output(str(tmp_path / "out")),
                              {**members, **{f"001.tar/{name}": data for name, data in rewritten.items()}})
    assert run(labeling, progress=False).files_changed == 0


def test_a_mask_file_left_without_its_marker_is_replaced_not_duplicated(tmp_path):
    """A run stopped between a mask file and its marker: the next run labels those files in a new shard and
    deletes the unfinished file, so readers see each image once."""
    images = good_images(6)
    write_files(tmp_path / "in", images)
    run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    (tmp_path / "out" / "_done" / "part-00000.json").unlink()
    again = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert (again.files_new, again.shards_written, again.unfinished_removed) == (4, 1, 1)
    assert sorted(f.name for f in (tmp_path / "out").glob("*.parquet")) == ["part-00001.parquet", "part-00002.parquet"]
    assert_masks_match_images(read_output(str(tmp_path / "out")), images)


def test_an_output_whose_markers_do_not_list_files_grows_the_same_way(tmp_path):
    """Markers written before they listed their files: the mask files' footers say what each shard covers."""
    first = good_images(5)
    write_files(tmp_path / "in", first)
    run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    for marker in (tmp_path / "out" / "_done").glob("*.json"):
        marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    added = {"img-000a.png": encoded(photo(40, 30, seed=50)), "img-003a.png": encoded(photo(30, 40, seed=51))}
    write_files(tmp_path / "in", added)
    grown = run(job(str(tmp_path / "in"), str(tmp_path / "out")), progress=False)
    assert counts(grown) == {"files_new": 2, "files_changed": 0, "files_vanished": 0, "files_relabeled": 0,
                             "shards_written": 1, "shards_skipped": 2}
    assert_masks_match_images(read_output(str(tmp_path / "out")), {**first, **added})


def test_a_new_parquet_file_on_s3_is_a_new_shard(bucket, tmp_path):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    first, second = good_images(3), good_images(2, start=3)
    fs.pipe_file(f"{bucket}/hf/train-1.parquet", parquet_bytes(first, "img2dataset"))
    labeling = job(f"s3://{bucket}/hf", str(tmp_path / "out"))
    run(labeling, progress=False)
    fs.pipe_file(f"{bucket}/hf/train-0.parquet", parquet_bytes(second, "img2dataset"))  # sorts first
    grown = run(labeling, progress=False)
    assert counts(grown) == {"files_new": 1, "files_changed": 0, "files_vanished": 0, "files_relabeled": 0,
                             "shards_written": 1, "shards_skipped": 1}
    assert_masks_match_images(read_output(str(tmp_path / "out")), {**first, **second})


def test_the_summary_counts_the_masks_with_a_warning_over_shards():
    summary = driver.Summary()
    for warned in (2, None, 1):
        marker = {"images_ok": 3, "images_failed": 0, "failures": []}
        summary.record("shard", None, marker if warned is None else {**marker, "images_warned": warned})
    summary.record("lost", "it kept failing", None)
    assert (summary.images_ok, summary.images_warned) == (9, 3)
