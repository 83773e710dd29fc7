"""Scoring a model and a labeling job's masks on a labeled dataset."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffseg import DiffSeg, DiffSegConfig
from diffseg.metrics import evaluate
from diffseg.preprocess import prepare_label
from diffseg.visualize import label_png
from pipeline.evaluation.datasets import open_dataset
from pipeline.evaluation.scoring import score_model, score_predictions, variants
from pipeline.store.dataset import OutputDataset, Row
from pipeline.store.location import Location, StorageError
from synthetic.datasets import cityscapes, coco_stuff

SMALL = DiffSegConfig(resolution=128, crop="center", kl_threshold=0.5)


@pytest.fixture(scope="module")
def segmenter() -> DiffSeg:
    return DiffSeg.from_pretrained("tiny", config=SMALL, device="cpu")


@pytest.fixture
def coco(tmp_path):
    coco_stuff(tmp_path / "coco", sizes=((96, 64), (64, 80), (72, 72), (80, 64)))
    return open_dataset("coco-stuff-27", str(tmp_path / "coco"))


def truth(dataset, segmenter):
    """Each example's prepared image and ground truth, the way the evaluation must see them."""
    for example in dataset.examples:
        image = segmenter.prepare(dataset.read_image(example))
        yield image, prepare_label(dataset.read_label(example), image)


def test_scores_are_the_metrics_of_the_segmenters_own_masks(coco, segmenter):
    report = score_model(segmenter, coco, variants("diffseg", SMALL), batch_size=2, samples=2, progress=False)
    images, labels = zip(*truth(coco, segmenter))
    # The same batches of 2 (4 images of one processing size): the same forwards, so exactly the same masks. (Other
    # batch sizes run other kernels, whose rounding may flip a near-tie label and move the scores.)
    expected = evaluate(segmenter.segment_prepared(list(images), batch_size=2), labels)
    (name, result), = report.results.items()
    assert name == "diffseg tau=0.5" and result["images"] == 4 and report.failed == 0
    assert [result[key] for key in ("accuracy", "miou", "tp")] == [expected[key] for key in ("accuracy", "miou", "tp")]
    assert [row["image_id"] for row in report.rows] == [e.image_id for e in coco.examples]
    assert len(report.samples) == 2 and report.samples[1].image_id == coco.examples[-1].image_id


def test_a_sweep_scores_each_threshold_from_one_forward(coco, segmenter):
    sweep = variants("diffseg", SMALL, sweep=(0.3, 1.1))
    report = score_model(segmenter, coco, sweep, limit=2, progress=False)
    assert list(report.results) == ["diffseg tau=0.3", "diffseg tau=1.1"]
    for variant in sweep:
        alone = score_model(segmenter, coco, [variant], limit=2, progress=False)
        assert alone.results[variant.name]["tp"] == report.results[variant.name]["tp"]
    segments = {name: [r["segments"] for r in report.rows if r["variant"] == name] for name in report.results}
    assert sum(segments["diffseg tau=0.3"]) > sum(segments["diffseg tau=1.1"])


def test_kmeans_s_takes_as_many_clusters_as_the_image_has_classes(coco, segmenter):
    report = score_model(segmenter, coco, variants("kmeans-s", SMALL), progress=False)
    assert all(0 < row["segments"] <= row["classes"] for row in report.rows)
    assert report.results["kmeans-s"]["images"] == 4
    constant = score_model(segmenter, coco, variants("kmeans-c", dataclasses.replace(SMALL, num_clusters=5)),
                           progress=False)
    assert list(constant.results) == ["kmeans-c K=5"]
    assert max(row["segments"] for row in constant.rows) == 5


def test_images_that_cannot_be_scored_are_error_rows(tmp_path, segmenter):
    coco_stuff(tmp_path)
    (tmp_path / "images" / "val2017" / "000000000139.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "annotations" / "val2017" / "000000001139.png").write_bytes(b"garbage")
    report = score_model(segmenter, open_dataset("coco-stuff-27", str(tmp_path)), variants("diffseg", SMALL),
                         progress=False)
    assert (report.images, report.failed, report.results["diffseg tau=0.5"]["images"]) == (3, 2, 1)
    errors = {row["image_id"]: row["error"] for row in report.rows if row["status"] == "error"}
    assert errors["000000000139.jpg"].startswith("cannot decode image")
    assert "cannot decode the label image" in errors["000000001139.jpg"]


def write_job_output(folder, dataset, masks, config):
    """A labeling job's output holding `masks` (join key -> label map or an error string)."""
    output = OutputDataset(Location(str(folder)))
    output.claim({"config": config.to_dict(), "model": {"model": "test"}})
    rows = [Row.failed(f"part/{key}.jpg", f"file:///{key}", mask) if isinstance(mask, str)
            else Row(f"part/{key}.jpg", f"file:///{key}", mask.shape[1], mask.shape[0],
                     label_png(torch.from_numpy(mask)), 1, [])
            for key, mask in masks.items()]
    output.write("part-00000", rows, {})
    return Location(str(folder))


@pytest.mark.parametrize("crop", ["center", "none"])
def test_perfect_predictions_score_one_with_the_jobs_geometry(tmp_path, coco, crop):
    config = dataclasses.replace(SMALL, crop=crop)
    segmenter = DiffSeg.from_pretrained("tiny", config=config, device="cpu")
    masks = {e.key: np.where(label >= 0, label, 0) for e, (_, label) in zip(coco.examples, truth(coco, segmenter))}
    assert {m.shape for m in masks.values()} == ({(128, 128)} if crop == "center" else {(64, 96), (80, 64), (72, 72),
                                                                                        (64, 80)})
    report = score_predictions(write_job_output(tmp_path / "out", coco, masks, config), coco, progress=False)
    result = report.results["diffseg (predictions)"]
    assert (result["accuracy"], result["miou"], result["images"], report.failed) == (1.0, 1.0, 4, 0)
    assert report.source["predictions"].endswith("/out") and report.source["config"]["crop"] == crop


def test_missing_failed_and_misfit_masks_are_error_rows(tmp_path, coco):
    keys = [e.key for e in coco.examples]
    masks = {keys[0]: "cannot decode image", keys[1]: np.zeros((5, 5), dtype=np.int64),
             keys[2]: np.zeros((128, 128), dtype=np.int64)}
    report = score_predictions(write_job_output(tmp_path / "out", coco, masks, SMALL), coco, progress=False)
    errors = [row["error"] for row in report.rows]
    assert errors[0] == "the labeling job could not label it: cannot decode image"
    assert errors[1] == "mask is 5x5 pixels, the ground truth 128x128"
    assert errors[2] is None and errors[3].startswith("no mask for this image in")
    assert report.failed == 3 and report.results["diffseg (predictions)"]["images"] == 1
    assert not math.isnan(report.results["diffseg (predictions)"]["accuracy"])


def test_a_folder_that_is_not_a_job_output_is_refused(tmp_path, coco):
    with pytest.raises(StorageError, match="not a labeling job's output \\(no _diffseg.json\\)"):
        score_predictions(Location(str(tmp_path)), coco, progress=False)


def test_variants_are_named_and_checked():
    assert [v.name for v in variants("diffseg", DiffSegConfig(kl_threshold=(1.1, 0.9, 0.9)))] == \
        ["diffseg tau=1.1,0.9,0.9"]
    kmeans_s, = variants("kmeans-s", DiffSegConfig())
    assert kmeans_s.config_for(4).num_clusters == 4 and kmeans_s.config_for(0).num_clusters == 1
    with pytest.raises(ValueError, match="sweep applies to the diffseg, diffcut and kway methods only"):
        variants("kmeans-c", DiffSegConfig(method="kmeans-c"), sweep=(0.9,))
    with pytest.raises(ValueError, match="method must be one of"):
        variants("stego", DiffSegConfig())


def test_cityscapes_scores_with_its_own_classes(tmp_path, segmenter):
    cityscapes(tmp_path)
    dataset = open_dataset("cityscapes", str(tmp_path))
    report = score_model(segmenter, dataset, variants("diffseg", SMALL), progress=False)
    assert report.results["diffseg tau=0.5"]["images"] == 2 and len(report.results["diffseg tau=0.5"]["iou"]) == 27
    assert all(row["classes"] == 3 for row in report.rows)
