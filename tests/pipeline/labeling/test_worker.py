import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import DiffSeg, DiffSegConfig, stream
from diffseg.preprocess import PreparedImage, prepare
from diffseg.regions import regions
from diffseg.segment import Segmentation
from pipeline.labeling.planning import inventory
from pipeline.labeling.worker import LabelWorker, Placement, WorkerSettings, segmentation_row
from pipeline.store.dataset import OutputDataset, decode_descriptors, decode_mask
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.pipeline.labeling.data import (
    BOMB_LIMIT,
    bad_image_bytes,
    bad_images,
    encoded,
    good_images,
    read_output,
    tar_bytes,
    write_files,
)

FAST = DiffSegConfig(resolution=256)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """A folder of good and bad images, labeled as one shard by a tiny-model worker (run "run-1") into an output
    folder: (input folder, output folder, the shard, the worker's report)."""
    folder, out = tmp_path_factory.mktemp("input"), tmp_path_factory.mktemp("output")
    write_files(folder, {**good_images(5), **bad_image_bytes()})
    source = Location(str(folder))
    settings = WorkerSettings(model="tiny", config=FAST, batch_size=2, max_pixels=BOMB_LIMIT)
    [shard] = inventory(source).shards
    return folder, out, shard, LabelWorker(settings, Placement(source, Location(str(out)))).process(shard, "run-1")


def test_a_shard_becomes_one_file_with_a_row_per_image(labeled, tiny):
    folder, out, shard, report = labeled
    in_process = DiffSeg(tiny.model, FAST)
    assert (report["images_ok"], report["images_failed"]) == (5, len(bad_images()))
    table = read_output(str(out))
    assert [row["image_id"] for row in table] == [f.key for f in shard.files]
    # The worker batches the shard's decodable images in order, 2 of one processing size together: the same batches
    # here run the same forwards row for row, hence exactly the same masks. (An image at another row of a batch may
    # round differently on some BLAS kernels.)
    good = [row["image_id"] for row in table if row["status"] == "ok"]
    prepared = [(key, in_process.prepare(folder / key, name=key)) for key in good]
    expected = {outcome.key: outcome.output for outcome in stream(
        prepared, lambda images: in_process.label_batch_scored(images, in_process.forward_batch(images, 2)), 2)}
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
        scored = expected[row["image_id"]]
        assert np.array_equal(mask, scored.labels.numpy())
        # float32 in the Parquet file as in the model's result: equal once both are Python floats
        assert row["segments"] == [{"id": r.id, "area": r.area, "bbox": list(r.bbox), "stability":
                                    float(scored.stability[r.id]), "score": float(scored.score[r.id])}
                                   for r in regions(mask)]


def test_provenance_names_model_settings_software_and_input(labeled):
    folder, out, _, _ = labeled
    provenance = OutputDataset(Location(str(out))).provenance("part-00000.parquet")
    assert provenance["model"] == "tiny" and provenance["random_weights"] is True
    assert provenance["config"] == FAST.to_dict() and provenance["config_hash"] == FAST.config_hash()
    assert provenance["run_id"] == "run-1" and provenance["created"].endswith("+00:00")
    assert provenance["device"] == "cpu" and provenance["dtype"] == "float32"
    assert set(provenance["versions"]) >= {"torch", "diffusers", "ray"} and provenance["diffseg"] == "0.1.0"
    assert "git_commit" in provenance
    files = provenance["shard"]["files"]
    assert len(files) == 11 and files[0]["uri"].startswith(f"file://{folder}/") and files[0]["size"] > 0


class Quantizer:
    """Stands in for `DiffSeg`: the real preprocessing, then labels from each photo's own pixels (its brightness in 6
    levels, at the mask size), so that every row tells which image it was made from."""

    info = {"model": "quantizer", "source": "test", "revision": None, "weights": None, "random_weights": True}
    device = torch.device("cpu")

    def __init__(self, config: DiffSegConfig) -> None:
        self.config = config

    def prepare(self, data: bytes, name: str | None = None) -> PreparedImage:
        return prepare(data, self.config, name=name, max_pixels=BOMB_LIMIT)

    def forward_batch(self, images: list[PreparedImage], batch_size: int) -> list[torch.Tensor]:
        levels = [((image.pixels.mean(0).numpy() + 1) * 3).clip(0, 5).astype(np.uint8) for image in images]
        return [torch.from_numpy(np.array(Image.fromarray(level).resize(image.mask_size[::-1], Image.NEAREST)))
                for level, image in zip(levels, images)]

    def label_batch_scored(self, images: list[PreparedImage], maps: list[torch.Tensor]) -> list[Segmentation]:
        """The label maps as the model's, every segment with score 0.5 and stability 1."""
        return [Segmentation(labels, torch.full((int(labels.max()) + 1,), 0.5), torch.ones(int(labels.max()) + 1))
                for labels in maps]


class QuantizingWorker(LabelWorker):
    def build_segmenter(self) -> Quantizer:
        return Quantizer(self.settings.config)


@pytest.fixture
def torch_threads():
    """Workers with `threads` set torch's thread count for the whole process: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def label_with(threads: int, source: Location, output: Location, batch_size: int | None = 2) -> list[dict]:
    """The rows a worker with `threads` writes for the one shard of `source`; object addresses in errors (PIL's
    messages name the stream) left out."""
    worker = QuantizingWorker(WorkerSettings(model="quantizer", config=FAST, batch_size=batch_size, threads=threads),
                              Placement(source, output))
    [shard] = inventory(source).shards
    worker.process(shard, run_id="run-1")
    return [{**row, "error": row["error"] and re.sub(r" at 0x[0-9a-f]+", "", row["error"])}
            for row in read_output(output.url)]


def test_the_pools_keep_the_shards_order_and_its_error_rows_and_give_the_rows_of_one_thread(tmp_path, torch_threads):
    # Photos of very different sizes take very different times to decode: the pool finishes them out of order.
    images = {**good_images(14), **bad_image_bytes(), "img-big.png": encoded(photo(1200, 1000, seed=1))}
    write_files(tmp_path / "in", images)
    source = Location(str(tmp_path / "in"))
    one = label_with(1, source, Location(str(tmp_path / "out-1")), batch_size=None)
    four = label_with(4, source, Location(str(tmp_path / "out-4")))
    assert one == four
    # No batch size given and none from the stand-in model: one image per batch.
    assert OutputDataset(Location(str(tmp_path / "out-1"))).provenance("part-00000.parquet")["batch_size"] == 1
    assert [row["image_id"] for row in four] == sorted(images)
    for row in four:
        if row["image_id"].startswith("bad-"):
            assert row["status"] == "error" and bad_images()[row["image_id"]] in row["error"]
            continue
        assert row["status"] == "ok"
        with Image.open(tmp_path / "in" / row["image_id"]) as original:
            expected = Quantizer(FAST).forward_batch([prepare(original, FAST)], 1)[0].numpy()
        assert np.array_equal(decode_mask(row["mask"]), expected)


def test_a_shard_that_cannot_be_read_raises_and_writes_nothing(tmp_path, torch_threads):
    archive = tar_bytes(good_images(8))
    write_files(tmp_path / "in", {"broken.tar": archive[:len(archive) // 2]})
    output = Location(str(tmp_path / "out"))
    with pytest.raises(tarfile.TarError):
        label_with(2, Location(str(tmp_path / "in")), output)
    assert output.files() == {}


def test_with_descriptors_every_segment_has_its_row_of_float16_values(tmp_path, tiny):
    write_files(tmp_path / "in", good_images(3))
    source, output = Location(str(tmp_path / "in")), Location(str(tmp_path / "out"))
    settings = WorkerSettings(model="tiny", config=FAST, batch_size=2, descriptors=True)
    [shard] = inventory(source).shards
    LabelWorker(settings, Placement(source, output)).process(shard, run_id="run-1")
    in_process = DiffSeg(tiny.model, FAST, descriptors=True)
    prepared = [(f.key, in_process.prepare(tmp_path / "in" / f.key, name=f.key)) for f in shard.files]
    expected = {outcome.key: outcome.output for outcome in stream(
        prepared, lambda images: in_process.label_batch_scored(images, in_process.forward_batch(images, 2)), 2)}
    for row in read_output(str(tmp_path / "out")):
        descriptors = decode_descriptors(row["descriptors"], row["num_segments"])
        # The same batches as the worker's, hence the same forwards and exactly the same float16 values.
        assert np.array_equal(descriptors, expected[row["image_id"]].descriptors.numpy())
        assert descriptors.shape == (row["num_segments"], 64)  # the tiny model's feature layer width


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_worker_with_a_share_of_a_gpu_caps_its_process_to_that_share_of_the_memory(tmp_path):
    settings = WorkerSettings(model="tiny", config=FAST, device="cuda", gpu_share=0.5)
    worker = LabelWorker(settings, Placement(Location(str(tmp_path / "in")), Location(str(tmp_path / "out"))))
    try:
        assert "info" in worker.load()
        assert torch.cuda.get_per_process_memory_fraction() == 0.5
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


@pytest.mark.parametrize("warning", [None, "the cut stopped at its work bound"])
def test_a_segmentations_warning_is_its_rows(warning):
    labels = torch.tensor([[0, 1], [1, 1]], dtype=torch.uint8)
    segmentation = Segmentation(labels, torch.ones(2), torch.ones(2), warning=warning)
    row = segmentation_row("a.png", "file:///a.png", segmentation)
    assert (row.status, row.warning, row.num_segments) == ("ok", warning, 2)
