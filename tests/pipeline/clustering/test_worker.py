"""`ClassWorker` in-process: counting and sampling a shard's descriptors, and writing its semantic masks."""

import json

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from diffseg.visualize import label_png
from pipeline.clustering.output import CLASS_SCHEMA, NONE
from pipeline.clustering.worker import ClassWorker
from pipeline.store.dataset import (
    METADATA_KEY,
    SCHEMA,
    OutputDataset,
    Row,
    decode_descriptors,
    decode_mask,
    encode_descriptors,
)
from pipeline.store.location import Location
from tests.pipeline.clustering.data import manifest, random_images, write_output
from tests.pipeline.labeling.data import encoded

EYE = np.eye(3, dtype=np.float32)
"""Centroids along the axes: a descriptor's class is its largest coordinate."""


def worker(tmp_path) -> ClassWorker:
    return ClassWorker(Location(str(tmp_path / "in")), Location(str(tmp_path / "out")), threads=2)


def test_counting_gives_the_segments_of_the_ok_rows(tmp_path):
    images = random_images(12, classes=3)
    write_output(tmp_path / "in", images, shards=2, classes=3, errors_per_shard=2)
    assert worker(tmp_path).count("part-00001") == sum(len(image.classes) for image in images[1::2])


def test_a_sample_is_the_descriptors_of_distinct_drawn_segments(tmp_path):
    write_output(tmp_path / "in", random_images(20, classes=3), shards=1, classes=3, dim=8)
    every = np.concatenate([decode_descriptors(row["descriptors"], row["num_segments"])
                            for row in OutputDataset(Location(str(tmp_path / "in"))).rows(SCHEMA.names)
                            if row["status"] == "ok"])
    drawn = worker(tmp_path).sample("part-00000", 10, [0, 0])
    assert drawn.dtype == np.float16 and drawn.shape == (10, 8)
    assert len({vector.tobytes() for vector in drawn}) == 10
    assert all((every == vector).all(axis=1).any() for vector in drawn)
    assert np.array_equal(drawn, worker(tmp_path).sample("part-00000", 10, [0, 0]))
    assert len(worker(tmp_path).sample("part-00000", len(every), [0, 0])) == len(every)


def test_assigning_writes_semantic_masks_with_each_segments_class_and_distance(tmp_path):
    labels = np.array([[0, 0, 1, 2], [0, 0, 1, 2], [3, 3, 3, 3]])
    descriptors = np.array([[0.1, 0.9, 0], [0, 0, 0.5], [0.8, 0.3, 0], [0, 0.6, 0.2]])
    output = OutputDataset(Location(str(tmp_path / "in")))
    output.claim(manifest())
    output.write("sub/part-0", [Row("a.png", "file:///a.png", 4, 3, label_png(labels), 4, [],
                                    descriptors=encode_descriptors(descriptors)),
                                Row.failed("b.png", "file:///b.png", "cannot decode image")], {"run_id": "r"})
    marker = worker(tmp_path).assign("sub/part-0", EYE, {"run_id": "r2"})
    assert marker["rows"] == 2 and marker["images_ok"] == 1 and marker["images_failed"] == 1
    table = pq.read_table(tmp_path / "out" / "sub" / "part-0.parquet")
    assert table.schema.remove_metadata() == CLASS_SCHEMA
    ok, failed = table.to_pylist()
    assert ok["classes"] == [1, 2, 0, 1] and ok["num_segments"] == 4 and (ok["width"], ok["height"]) == (4, 3)
    unit = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
    assert np.allclose(ok["distances"], 1 - unit.max(axis=1), atol=1e-3)
    assert np.array_equal(decode_mask(ok["mask"]), np.array([[1, 1, 2, 0], [1, 1, 2, 0], [1, 1, 1, 1]]))
    assert failed == {"image_id": "b.png", "source_uri": "file:///b.png", "width": None, "height": None,
                      "mask": None, "num_segments": None, "classes": None, "distances": None, "status": "error",
                      "error": "cannot decode image"}
    footer = json.loads(pq.read_metadata(tmp_path / "out" / "sub" / "part-0.parquet").metadata[METADATA_KEY.encode()])
    assert footer["run_id"] == "r2" and footer["shard"] == {"name": "sub/part-0",
                                                             "input": f"file://{tmp_path}/in/sub/part-0.parquet"}
    assert (tmp_path / "out" / "_done" / "sub" / "part-0.json").exists()


def test_rows_whose_descriptors_or_mask_cannot_be_used_become_error_rows(tmp_path):
    mask = label_png(np.array([[0, 1]]))
    good = encode_descriptors(np.array([[1, 0, 0], [0, 1, 0]]))
    output = OutputDataset(Location(str(tmp_path / "in")))
    output.claim(manifest())
    output.write("part-0", [
        Row("none.png", "u", 2, 1, mask, 2, [], descriptors=None),
        Row("short.png", "u", 2, 1, mask, 2, [], descriptors=good[:-2]),
        Row("nan.png", "u", 2, 1, mask, 2, [], descriptors=encode_descriptors(np.array([[np.nan] * 3, [1, 0, 0]]))),
        Row("wide.png", "u", 2, 1, mask, 2, [], descriptors=encode_descriptors(np.ones((2, 4)))),
        Row("png.png", "u", 2, 1, b"not a png", 2, [], descriptors=good),
        Row("rgb.png", "u", 2, 1, encoded(Image.new("RGB", (2, 1))), 2, [], descriptors=good),
        Row("beyond.png", "u", 3, 1, label_png(np.array([[0, 1, 7]])), 2, [], descriptors=good),
    ], {"run_id": "r"})
    worker(tmp_path).assign("part-0", EYE, {})
    rows = {row["image_id"]: row for row in pq.read_table(tmp_path / "out" / "part-0.parquet").to_pylist()}
    assert {name: rows[name]["error"] for name in ("none.png", "short.png", "nan.png", "wide.png")} == {
        "none.png": "cannot use its descriptors: no descriptors",
        "short.png": "cannot use its descriptors: 5 descriptor values do not split into 2 segments",
        "nan.png": "cannot use its descriptors: descriptors that are not finite",
        "wide.png": "its descriptors have 4 dimensions, the centroids 3"}
    assert all(rows[name]["status"] == "error" and rows[name]["error"].startswith("cannot decode its mask")
               for name in ("png.png", "rgb.png"))
    # A pixel whose segment id has no descriptor has no class.
    assert rows["beyond.png"]["status"] == "ok"
    assert decode_mask(rows["beyond.png"]["mask"]).tolist() == [[0, 1, NONE]]


def test_the_output_reads_like_a_labeling_output(tmp_path):
    write_output(tmp_path / "in", random_images(6, classes=3), shards=2, classes=3, dim=3)
    for shard in ("part-00000", "part-00001"):
        worker(tmp_path).assign(shard, EYE, {"run_id": "r"})
    as_masks = OutputDataset(Location(str(tmp_path / "out")))
    rows = list(as_masks.rows(["image_id", "mask", "status", "error"]))
    assert len(rows) == 8 and sum(row["status"] == "ok" for row in rows) == 6
    assert all(decode_mask(row["mask"]).max() < 3 for row in rows if row["status"] == "ok")
    assert ds.dataset(str(tmp_path / "out"), format="parquet").schema.remove_metadata() == CLASS_SCHEMA
