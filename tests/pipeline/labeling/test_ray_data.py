"""Ray Data: a labeling output read as a dataset, and `Labeler` as a `map_batches` step, on the local test cluster."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import ray

from diffseg import DiffSegConfig
from diffseg.regions import regions
from pipeline.labeling.driver import run
from pipeline.labeling.job import LabelJob
from pipeline.labeling.ray_data import COLUMNS, Labeler, read_masks
from pipeline.store.dataset import OutputDataset, decode_mask
from pipeline.store.location import Location, StorageError
from synthetic.photos import photo
from tests.pipeline.labeling.data import bad_image_bytes, encoded, good_images, write_files

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]

FAST = DiffSegConfig(resolution=256)


def assert_labeled_like_the_job(row: dict, size: tuple[int, int]) -> None:
    """An ok row as the job writes it: a mask of the image's size, and its segments' areas, boxes and scores."""
    mask = decode_mask(row["mask"])
    assert row["status"] == "ok" and row["error"] is None
    assert mask.shape == size == (row["height"], row["width"])
    assert [(s["id"], s["area"], s["bbox"]) for s in row["segments"]] == \
        [(r.id, r.area, list(r.bbox)) for r in regions(mask)]
    assert row["num_segments"] == len(row["segments"])
    assert all(0 <= s["score"] <= 1 and 0 <= s["stability"] <= 1 for s in row["segments"])


def test_labeler_labels_image_bytes_and_arrays_in_map_batches_and_keeps_the_other_columns():
    photos = {f"k{i}": photo(96, 64, seed=i) for i in range(5)}
    items = [{"image": encoded(image, "PNG"), "key": key} for key, image in photos.items()]
    items.append({"image": bad_image_bytes()["bad-truncated.jpg"], "key": "broken"})
    labeled = ray.data.from_items(items).map_batches(
        Labeler, fn_constructor_kwargs={"model": "tiny", "config": FAST, "id_column": "key"},
        compute=ray.data.ActorPoolStrategy(size=1), batch_size=4, num_cpus=1)
    rows = {row["key"]: row for row in labeled.take_all()}
    assert set(rows) == {*photos, "broken"}
    assert all(set(COLUMNS) | {"key"} == set(row) for row in rows.values())
    for key, image in photos.items():
        assert rows[key]["image_id"] == key
        assert_labeled_like_the_job(rows[key], (image.height, image.width))
    assert rows["broken"]["status"] == "error" and "cannot decode" in rows["broken"]["error"]

    array = np.asarray(photo(80, 48, seed=9))
    [row] = ray.data.from_items([{"image": array}]).map_batches(
        Labeler, fn_constructor_kwargs={"model": "tiny", "config": FAST}, compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=2, num_cpus=1).take_all()
    assert row["image_id"] == "0"
    assert_labeled_like_the_job(row, array.shape[:2])


def test_read_masks_gives_the_finished_files_rows_with_masks_decoded_on_demand(tmp_path):
    images = good_images(6)
    write_files(tmp_path / "in", images)
    out = tmp_path / "out"
    run(LabelJob(input=str(tmp_path / "in"), output=str(out), model="tiny", config=FAST, num_actors=1,
                 cpus_per_actor=1, shard_size=4), progress=False)
    (out / "part-99999.parquet").write_bytes((out / "part-00000.parquet").read_bytes())  # no `_done/` marker
    expected = {row["image_id"]: row for row in OutputDataset(Location(str(out))).rows(["image_id", "mask"])}
    rows = read_masks(str(out), decode=True).take_all()
    assert sorted(row["image_id"] for row in rows) == sorted(images)  # each once: the unfinished file left out
    for row in rows:
        assert row["mask"] == expected[row["image_id"]]["mask"]
        assert np.array_equal(row["labels"], decode_mask(row["mask"]))
        assert all(s["score"] is not None for s in row["segments"])
    with pytest.raises(StorageError, match="not a labeling job's output"):
        read_masks(str(tmp_path / "in"))


def test_reading_masks_logs_no_execution_plan_and_leaves_other_datasets_as_they_were(tmp_path):
    write_files(tmp_path / "in", good_images(2))
    out = tmp_path / "out"
    run(LabelJob(input=str(tmp_path / "in"), output=str(out), model="tiny", config=FAST, num_actors=1,
                 cpus_per_actor=1, shard_size=4), progress=False)
    with ray_data_log() as records:
        assert len(read_masks(str(out), decode=True).take_all()) == 2
    assert not [record for record in records if "Execution plan" in record.getMessage()]
    with ray_data_log() as records:
        assert len(ray.data.range(3).take_all()) == 3
    assert [record for record in records if "Execution plan" in record.getMessage()]


@contextmanager
def ray_data_log() -> Iterator[list[logging.LogRecord]]:
    """The records Ray Data logs meanwhile, whatever its console shows (its logger does not propagate)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("ray.data").addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger("ray.data").removeHandler(handler)
