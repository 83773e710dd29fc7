import numpy as np
import pytest
from PIL import Image

from diffseg import DiffSeg, DiffSegConfig
from diffseg.regions import regions
from pipeline.labeling.output import OutputDataset, decode_mask
from pipeline.labeling.sources import inventory
from pipeline.labeling.storage import Location
from pipeline.labeling.worker import LabelWorker, Placement, WorkerSettings
from tests.pipeline.labeling.data import BOMB_LIMIT, bad_image_bytes, bad_images, good_images, read_output, write_files


@pytest.fixture(scope="module")
def worker_dirs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("input")
    write_files(folder, {**good_images(5), **bad_image_bytes()})
    return folder, tmp_path_factory.mktemp("output")


FAST = DiffSegConfig(resolution=256)


def test_a_shard_becomes_one_file_with_a_row_per_image(worker_dirs, tiny):
    folder, out = worker_dirs
    source, output = Location(str(folder)), Location(str(out))
    settings = WorkerSettings(model="tiny", config=FAST, batch_size=2, max_pixels=BOMB_LIMIT)
    worker = LabelWorker(settings, Placement(source, output))
    in_process = DiffSeg(tiny.model, FAST)
    [shard] = inventory(source).shards
    report = worker.process(shard, run_id="run-1")
    assert (report["images_ok"], report["images_failed"]) == (5, len(bad_images()))
    table = read_output(str(out))
    assert [row["image_id"] for row in table] == [f.key for f in shard.files]
    # The worker batches the shard's decodable images in order, 2 of one processing size together: the same batches
    # here run the same forwards row for row, hence exactly the same masks. (An image at another row of a batch may
    # round differently on some BLAS kernels.)
    good = [row["image_id"] for row in table if row["status"] == "ok"]
    expected = dict(zip(good, in_process.segment([folder / key for key in good], batch_size=2)))
    for row in table:
        if row["image_id"].startswith("bad-"):
            assert row["status"] == "error" and row["mask"] is None
            assert bad_images()[row["image_id"]] in row["error"]
            continue
        original = Image.open(folder / row["image_id"])
        mask = decode_mask(row["mask"])
        assert (row["status"], row["error"]) == ("ok", None)
        assert mask.shape == (original.height, original.width) == (row["height"], row["width"])
        assert row["num_segments"] == len(np.unique(mask)) == len(row["segments"])
        assert row["segments"] == [{"id": r.id, "area": r.area, "bbox": list(r.bbox)} for r in regions(mask)]
        assert np.array_equal(mask, expected[row["image_id"]].numpy())


def test_provenance_names_model_settings_software_and_input(worker_dirs):
    folder, out = worker_dirs
    provenance = OutputDataset(Location(str(out))).provenance("part-00000.parquet")
    assert provenance["model"] == "tiny" and provenance["random_weights"] is True
    assert provenance["config"] == FAST.to_dict() and provenance["config_hash"] == FAST.config_hash()
    assert provenance["run_id"] == "run-1" and provenance["created"].endswith("+00:00")
    assert provenance["device"] == "cpu" and provenance["dtype"] == "float32"
    assert set(provenance["versions"]) >= {"torch", "diffusers", "ray"} and provenance["diffseg"] == "0.1.0"
    assert "git_commit" in provenance
    files = provenance["shard"]["files"]
    assert len(files) == 11 and files[0]["uri"].startswith(f"file://{folder}/") and files[0]["size"] > 0
