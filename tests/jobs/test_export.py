"""`jobs/export.py` on real labeling outputs: masks and overlays as PNG files, COCO, SA-1B and WebDataset read
back with their own readers, filters, ids as safe paths, sources gone."""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image, ImageOps
from pycocotools import mask as mask_codec
from pycocotools.coco import COCO

from diffseg import DiffSegConfig
from diffseg.preprocess import center_square
from diffseg.visualize import colorize
from pipeline.export import FORMATS
from pipeline.labeling.planning import inventory
from pipeline.labeling.worker import LabelWorker, Placement, WorkerSettings
from pipeline.store.dataset import OutputDataset, decode_mask
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.jobs.stores import at_endpoint, does_not_answer, nothing_listening
from tests.pipeline.export.data import (
    blocks,
    output_with_lost_photos,
    scored_row,
    write_output,
    write_output_before_scores,
)
from tests.pipeline.labeling.data import encoded, good_images, parquet_bytes, read_output, write_files

ROOT = Path(__file__).resolve().parents[2]
EXPORT, LABEL = str(ROOT / "jobs" / "export.py"), str(ROOT / "jobs" / "label.py")
RESOLUTION = 128
FAST = ["--model", "tiny", "--resolution", str(RESOLUTION), "--num-actors", "1", "--cpus-per-actor", "1",
        "--no-progress"]


def export(output: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EXPORT, str(output), "--out", str(out), "--no-progress", *args],
                          capture_output=True, text=True, timeout=300)


def label(source: Path, output: Path, *args: str) -> None:
    """Label `source` with the real job on the session's Ray cluster."""
    result = subprocess.run([sys.executable, LABEL, "--input", str(source), "--output", str(output), *FAST, *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def label_in_process(source: Path, output: Path, config: DiffSegConfig) -> None:
    """Label `source` as the job does, without Ray: the manifest with the job's settings, then every shard."""
    source_location, output_location = Location(str(source)), Location(str(output))
    OutputDataset(output_location).claim({"config": config.to_dict(), "columns": {"image": None, "id": None}})
    worker = LabelWorker(WorkerSettings(model="tiny", config=config), Placement(source_location, output_location))
    for shard in inventory(source_location).shards:
        worker.process(shard, run_id="r")


def rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored `width x height` whose EXIF says to show it turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo(width, height, seed=7), "JPEG", exif=exif.tobytes())


def as_labeled(data: bytes, crop: bool = False) -> Image.Image:
    """The photo as the job labels it: EXIF orientation applied; with `crop`, the central square resized to
    the job's resolution."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    if not crop:
        return image
    left, top, side = center_square(*image.size, DiffSegConfig())
    return image.crop((left, top, left + side, top + side)).resize((RESOLUTION, RESOLUTION),
                                                                   Image.Resampling.BILINEAR)


def assert_photo_under_mask(overlay_file: Path, photo_shown: Image.Image) -> None:
    """The overlay is the photo and the colored mask next to it blended half and half (within the blend's
    rounding); the colored mask alone is far from that."""
    mask = decode_mask(Path(str(overlay_file).removesuffix(".overlay.png") + ".mask.png").read_bytes())
    colors = np.asarray(colorize(mask), dtype=float)
    expected = (np.asarray(photo_shown, dtype=float) + colors) / 2
    shown = np.asarray(Image.open(overlay_file), dtype=float)
    assert shown.shape == expected.shape
    assert np.abs(shown - expected).max() <= 1, f"{overlay_file.name} does not show its photo"


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """A tar holding `members` as given: names are not cleaned, and may repeat."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def inside(folder: Path, path: Path) -> bool:
    return os.path.commonpath([folder.resolve(), path.resolve()]) == str(folder.resolve())


def written_outside(tmp_path: Path, out: Path) -> list[Path]:
    """Files under `tmp_path` that are neither input, job output nor under `out`."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and not inside(out, p)
            and not inside(tmp_path / "in", p) and not inside(tmp_path / "out", p)]


def test_masks_are_exported_as_label_pngs_and_overlays(tmp_path):
    write_files(tmp_path / "in" / "sub", good_images(2))
    write_files(tmp_path / "in", {"broken.png": b"nope"})
    label_in_process(tmp_path / "in", tmp_path / "out", DiffSegConfig(resolution=RESOLUTION))
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"2 mask(s) written to {tmp_path / 'png'} as NAME.mask.png and NAME.overlay.png; " \
        "1 row(s) with status=error skipped"
    assert sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png")) == [
        "sub/img-000.png.mask.png", "sub/img-000.png.overlay.png",
        "sub/img-001.jpg.mask.png", "sub/img-001.jpg.overlay.png"]
    for name in ("img-000.png", "img-001.jpg"):
        assert_photo_under_mask(tmp_path / "png" / "sub" / f"{name}.overlay.png",
                                as_labeled((tmp_path / "in" / "sub" / name).read_bytes()))


def test_rows_whose_photo_is_gone_are_exported_with_the_colored_mask_and_counted(tmp_path):
    write_files(tmp_path / "in", good_images(3))
    label_in_process(tmp_path / "in", tmp_path / "out", DiffSegConfig(resolution=RESOLUTION))
    (tmp_path / "in" / "img-000.png").unlink()
    (tmp_path / "in" / "img-001.jpg").write_bytes(b"garbage")
    photo(50, 50).save(tmp_path / "in" / "img-002.png")  # replaced by another picture since it was labeled
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    assert "3 mask(s) written" in result.stderr and "3 overlay(s) without photo: source unreadable" in result.stderr
    for name in good_images(3):
        mask = decode_mask((tmp_path / "png" / f"{name}.mask.png").read_bytes())
        overlay = np.asarray(Image.open(tmp_path / "png" / f"{name}.overlay.png"))
        assert np.array_equal(overlay, np.asarray(colorize(mask)))


def test_an_unreadable_output_is_one_line_and_exit_two(tmp_path):
    result = export(tmp_path / "missing", tmp_path / "png")
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_file_for_out_or_for_the_output_is_one_line_and_exit_two(tmp_path):
    write_files(tmp_path / "in", good_images(1))
    label_in_process(tmp_path / "in", tmp_path / "out", DiffSegConfig(resolution=RESOLUTION))
    (tmp_path / "file").write_text("")
    for output, out, line in [
            (tmp_path / "out", tmp_path / "file", f"error: --out {tmp_path / 'file'} is a file; give a folder (new or "
                                                  "empty)"),
            (tmp_path / "file", tmp_path / "png", f"error: {tmp_path / 'file'} is a file; give the folder of a "
                                                  "labeling job's output")]:
        result = export(output, out)
        assert result.returncode == 2 and result.stderr.splitlines() == [line]
    assert not (tmp_path / "png").exists()


def test_an_s3_endpoint_that_does_not_answer_is_one_line_in_seconds(tmp_path):
    endpoint = nothing_listening()
    started = time.monotonic()
    result = subprocess.run([sys.executable, EXPORT, "s3://nope/masks", "--out", str(tmp_path / "png"),
                             "--storage-options", at_endpoint(endpoint)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < 20
    assert result.stderr.splitlines() == [f"error: s3://nope/masks: {does_not_answer(endpoint, 'nope/masks')}"]


@pytest.mark.integration
def test_tar_member_names_never_lead_outside_the_export_folder(tmp_path, ray_cluster):
    names = ["../../../escape.png", "/abs.png", "sub/../../../up.png", "back\\..\\..\\slash.png",
             "line\nbreak.png", "x" * 300 + ".png", "dup.png", "dup.png", "DUP.png"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.tar").write_bytes(
        tar_of([(name, encoded(photo(64, 48, seed=i))) for i, name in enumerate(names)]))
    label(tmp_path / "in", tmp_path / "out")
    out = tmp_path / "deep" / "er" / "png"  # a plain join of '../../../escape.png' would land in tmp_path
    result = export(tmp_path / "out", out)
    assert result.returncode == 0, result.stderr
    rows = read_output(str(tmp_path / "out"))
    assert len(rows) == len(names) and all(row["status"] == "ok" for row in rows)
    assert len(list(out.rglob("*.mask.png"))) == len(list(out.rglob("*.overlay.png"))) == len(rows)
    assert written_outside(tmp_path, out) == [] and not list(tmp_path.parent.glob("escape.png*"))
    assert (out / "shard.tar" / "%2E%2E" / "%2E%2E" / "%2E%2E" / "escape.png.mask.png").is_file()
    assert (out / "shard.tar" / "%" / "abs.png.mask.png").is_file()
    assert "2 id(s) written as NAME~N so as not to overwrite another id's files" in result.stderr.splitlines()[-1]


@pytest.mark.integration
def test_parquet_ids_never_lead_outside_the_export_folder(tmp_path, ray_cluster):
    ids = [str(tmp_path / "absolute.png"), "../../../escape.png", "a\\..\\..\\b", "nul\x00byte", "<b>x</b>", "dup",
           "dup"]
    (tmp_path / "in").mkdir()
    table = pa.table({"key": ids, "jpg": pa.array([encoded(photo(48, 64, seed=i)) for i in range(len(ids))])})
    pq.write_table(table, tmp_path / "in" / "data.parquet")
    label(tmp_path / "in", tmp_path / "out")
    out = tmp_path / "deep" / "er" / "png"
    result = export(tmp_path / "out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(row["image_id"] for row in read_output(str(tmp_path / "out"))) == sorted(ids)
    assert len(list(out.rglob("*.mask.png"))) == len(list(out.rglob("*.overlay.png"))) == len(ids)
    assert written_outside(tmp_path, out) == []
    assert (out / "dup.mask.png").is_file() and (out / "dup~2.mask.png").is_file()
    assert "1 id(s) written as NAME~N" in result.stderr.splitlines()[-1]


@pytest.mark.integration
def test_overlays_of_tar_members_show_their_photo(tmp_path, ray_cluster):
    images = {**good_images(3), "rotated.jpg": rotated_jpeg(96, 64)}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.tar").write_bytes(tar_of(list(images.items())))
    label(tmp_path / "in", tmp_path / "out")
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0 and "without photo" not in result.stderr, result.stderr
    for name, data in images.items():
        assert_photo_under_mask(tmp_path / "png" / "shard.tar" / f"{name}.overlay.png", as_labeled(data))


@pytest.mark.integration
def test_overlays_of_parquet_rows_show_their_photo(tmp_path, ray_cluster):
    images = {**good_images(3), "rotated.jpg": rotated_jpeg(96, 64)}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.parquet").write_bytes(parquet_bytes(images, "datasets"))
    label(tmp_path / "in", tmp_path / "out")
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0 and "without photo" not in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(
        f"data.parquet%23{row}.{kind}.png" for row in range(len(images)) for kind in ("mask", "overlay"))
    for row, data in enumerate(images.values()):  # ids are FILE#ROW: '#' is escaped
        assert_photo_under_mask(tmp_path / "png" / f"data.parquet%23{row}.overlay.png", as_labeled(data))


@pytest.mark.integration
def test_center_crop_overlays_show_the_cropped_photo(tmp_path, ray_cluster):
    images = {**good_images(3), "rotated.jpg": rotated_jpeg(96, 64)}  # 96x64, 64x64, 80x120, shown 64x96
    write_files(tmp_path / "in", images)
    label(tmp_path / "in", tmp_path / "out", "--crop", "center")
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0 and "without photo" not in result.stderr, result.stderr
    for name, data in images.items():
        overlay = tmp_path / "png" / f"{name}.overlay.png"
        assert Image.open(overlay).size == (RESOLUTION, RESOLUTION)
        assert_photo_under_mask(overlay, as_labeled(data, crop=True))


# Training formats: a corpus labeled once with the tiny model, exported to each format and read back with the
# format's own reader; the masks and areas must be the Parquet output's exactly.


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """A folder `in` of photos (one stored turned by EXIF, one broken) labeled into `out` by the tiny model."""
    root = tmp_path_factory.mktemp("labeled")
    write_files(root / "in", {**good_images(3), "sub/rotated.jpg": rotated_jpeg(96, 64), "broken.png": b"nope"})
    label_in_process(root / "in", root / "out", DiffSegConfig(resolution=RESOLUTION))
    return root


def ok_rows(output: Path) -> dict[str, dict]:
    return {row["image_id"]: row for row in read_output(str(output)) if row["status"] == "ok"}


def assert_rle_is_the_segment(rle: dict, labels: np.ndarray, segment: dict) -> None:
    decoded = mask_codec.decode({**rle, "counts": rle["counts"].encode()})
    assert np.array_equal(decoded, labels == segment["id"])
    assert mask_codec.area({**rle, "counts": rle["counts"].encode()}) == segment["area"]


def test_coco_annotations_load_in_pycocotools_and_decode_to_the_masks(labeled, tmp_path):
    result = export(labeled / "out", tmp_path / "coco", "--format", "coco", "--num-workers", "2")
    assert result.returncode == 0, result.stderr
    rows = ok_rows(labeled / "out")
    total = sum(len(row["segments"]) for row in rows.values())
    assert result.stderr.strip().splitlines()[-1] == (
        f"4 image(s) and {total} annotation(s) written to {tmp_path / 'coco' / 'annotations.json'}; "
        "1 row(s) with status=error skipped")
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "segment"}]
    assert sorted(image["file_name"] for image in coco.dataset["images"]) == sorted(rows)
    for image in coco.dataset["images"]:
        row = rows[image["file_name"]]
        labels = decode_mask(row["mask"])
        assert (image["height"], image["width"]) == labels.shape == (row["height"], row["width"])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(annotations) == len(row["segments"])
        for annotation, segment in zip(annotations, row["segments"]):
            assert_rle_is_the_segment(annotation["segmentation"], labels, segment)
            assert np.array_equal(coco.annToMask(annotation), labels == segment["id"])
            assert (annotation["area"], annotation["bbox"]) == (segment["area"], segment["bbox"])
            assert annotation["category_id"] == 1 and annotation["iscrowd"] == 0
            assert annotation["score"] == pytest.approx(segment.get("score"), abs=1e-6)
            assert annotation["stability"] == pytest.approx(segment.get("stability"), abs=1e-6)
    assert len({a["id"] for a in coco.dataset["annotations"]}) == total


def test_sa1b_files_hold_each_images_segments(labeled, tmp_path):
    result = export(labeled / "out", tmp_path / "sa1b", "--format", "sa1b")
    assert result.returncode == 0, result.stderr
    assert "4 JSON file(s) written" in result.stderr.splitlines()[-1]
    rows = ok_rows(labeled / "out")
    assert sorted(p.relative_to(tmp_path / "sa1b").as_posix() for p in (tmp_path / "sa1b").rglob("*.json")) == \
        sorted(f"{image_id}.json" for image_id in rows)
    for image_id, row in rows.items():
        document = json.loads((tmp_path / "sa1b" / f"{image_id}.json").read_text())
        labels = decode_mask(row["mask"])
        height, width = labels.shape
        assert document["image"]["file_name"] == image_id
        assert (document["image"]["width"], document["image"]["height"]) == (width, height)
        assert [a["id"] for a in document["annotations"]] == [s["id"] for s in row["segments"]]
        for annotation, segment in zip(document["annotations"], row["segments"]):
            assert_rle_is_the_segment(annotation["segmentation"], labels, segment)
            assert (annotation["area"], annotation["bbox"]) == (segment["area"], segment["bbox"])
            [[x, y]] = annotation["point_coords"]
            assert labels[y, x] == segment["id"] and annotation["crop_box"] == [0, 0, width, height]
            assert annotation["predicted_iou"] == pytest.approx(segment.get("score"), abs=1e-6)
            assert annotation["stability_score"] == pytest.approx(segment.get("stability"), abs=1e-6)


def test_webdataset_shards_hold_photo_mask_and_json_aligned(labeled, tmp_path):
    result = export(labeled / "out", tmp_path / "wds", "--format", "webdataset", "--shard-size", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    rows = ok_rows(labeled / "out")
    shards = [str(p) for p in sorted((tmp_path / "wds").glob("*.tar"))]
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert len(samples) == len(rows) and all(re.fullmatch(r"\d{9}", s["__key__"]) for s in samples)
    for sample in samples:
        meta = json.loads(sample["json"])
        row = rows[meta["id"]]
        assert sample["mask.png"] == row["mask"] and (meta["width"], meta["height"]) == (row["width"], row["height"])
        assert [{k: s[k] for k in ("id", "area", "bbox")} for s in meta["segments"]] == \
            [{k: s[k] for k in ("id", "area", "bbox")} for s in row["segments"]]
        source = (labeled / "in" / meta["id"]).read_bytes()
        if meta["id"] == "sub/rotated.jpg":  # turned by EXIF: the photo as labeled, losslessly
            assert "jpg" not in sample and np.array_equal(np.asarray(Image.open(io.BytesIO(sample["png"]))),
                                                          np.asarray(as_labeled(source)))
        else:  # the source's own bytes
            assert sample[meta["id"].rsplit(".", 1)[1]] == source
            assert Image.open(io.BytesIO(source)).size == (row["width"], row["height"])


def test_webdataset_photos_of_a_center_crop_run_are_the_crops(tmp_path):
    images = {"wide.jpg": encoded(photo(96, 64, seed=1), "JPEG"), "rotated.jpg": rotated_jpeg(96, 64)}
    write_files(tmp_path / "in", images)
    label_in_process(tmp_path / "in", tmp_path / "out", DiffSegConfig(resolution=RESOLUTION, crop="center"))
    result = export(tmp_path / "out", tmp_path / "wds", "--format", "webdataset")
    assert result.returncode == 0, result.stderr
    for sample in wds.WebDataset(str(tmp_path / "wds" / "shard-000000.tar"), shardshuffle=False):
        shown = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert shown.shape == (RESOLUTION, RESOLUTION, 3)
        assert np.array_equal(shown, np.asarray(as_labeled(images[json.loads(sample["json"])["id"]], crop=True)))


def scored_output(tmp_path: Path) -> tuple[Path, list]:
    """An output of two images whose segments have known scores: label i has score 0.2 i, stability 1 - 0.2 i."""
    write_files(tmp_path / "in", {"a.png": encoded(photo(32, 24, seed=1)), "b.png": encoded(photo(40, 20, seed=2))})
    scores = {i: (0.2 * i, 1 - 0.2 * i) for i in range(4)}
    rows = [scored_row("a.png", tmp_path / "in" / "a.png", blocks(24, 32), scores),
            scored_row("b.png", tmp_path / "in" / "b.png", blocks(20, 40), scores)]
    write_output(tmp_path / "out", rows)
    return tmp_path / "out", rows


def test_filters_leave_segments_out_of_every_training_format(tmp_path):
    output, rows = scored_output(tmp_path)
    min_area = 60
    kept = {row.image_id: [s["id"] for s in row.segments if s["area"] >= min_area and s["score"] >= 0.39
                           and s["stability"] >= 0.39] for row in rows}
    assert all(0 < len(ids) < 4 for ids in kept.values())  # the filters drop some segments, not all
    flags = ["--min-area", str(min_area), "--min-score", "0.39", "--min-stability", "0.39"]
    for fmt in ("coco", "sa1b", "webdataset"):
        assert export(output, tmp_path / fmt, "--format", fmt, *flags).returncode == 0
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    for image in coco.dataset["images"]:
        labels = decode_mask(next(r.mask for r in rows if r.image_id == image["file_name"]))
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert [int(np.unique(labels[coco.annToMask(a) == 1])[0]) for a in annotations] == kept[image["file_name"]]
        assert all(a["score"] == pytest.approx(0.2 * i) for a, i in zip(annotations, kept[image["file_name"]]))
    for row in rows:
        document = json.loads((tmp_path / "sa1b" / f"{row.image_id}.json").read_text())
        assert [a["id"] for a in document["annotations"]] == kept[row.image_id]
        assert [a["stability_score"] for a in document["annotations"]] == \
            pytest.approx([1 - 0.2 * i for i in kept[row.image_id]])
    for sample in wds.WebDataset(str(tmp_path / "webdataset" / "shard-000000.tar"), shardshuffle=False):
        meta = json.loads(sample["json"])
        assert [s["id"] for s in meta["segments"]] == kept[meta["id"]]
        assert sample["mask.png"] == next(r.mask for r in rows if r.image_id == meta["id"])  # masks unchanged


def test_outputs_labeled_before_scores_export_null_scores_and_refuse_score_filters(tmp_path):
    write_files(tmp_path / "in", {"a.png": encoded(photo(32, 24, seed=1))})
    write_output_before_scores(tmp_path / "out", [scored_row("a.png", tmp_path / "in" / "a.png", blocks(24, 32),
                                                             {i: (0.5, 0.5) for i in range(4)})])
    for flag in ("--min-score", "--min-stability"):
        result = export(tmp_path / "out", tmp_path / "coco", "--format", "coco", flag, "0.5")
        assert result.returncode == 2
        assert result.stderr == f"error: this output was labeled before scores existed; relabel to use {flag}\n"
    newer = tmp_path / "newer"  # a file with scores listed first does not hide an older one without
    shutil.copytree(tmp_path / "out", newer)
    OutputDataset(Location(str(newer))).write("part-0", [scored_row("n.png", tmp_path / "in" / "a.png",
                                                                    blocks(24, 32), {i: (1, 1) for i in range(4)})], {})
    assert sorted(p.name for p in newer.glob("*.parquet")) == ["part-0.parquet", "part-00000.parquet"]
    assert export(newer, tmp_path / "x", "--format", "coco", "--min-score", "0.5").returncode == 2
    assert export(tmp_path / "out", tmp_path / "coco", "--format", "coco", "--min-area", "1").returncode == 0
    annotations = json.loads((tmp_path / "coco" / "annotations.json").read_text())["annotations"]
    assert len(annotations) == 4 and all(a["score"] is None and a["stability"] is None for a in annotations)
    assert export(tmp_path / "out", tmp_path / "sa1b", "--format", "sa1b").returncode == 0
    document = json.loads((tmp_path / "sa1b" / "a.png.json").read_text())
    assert all(a["predicted_iou"] is None and a["stability_score"] is None for a in document["annotations"])


def test_filters_with_png_and_bad_values_are_one_line_and_exit_two(tmp_path):
    for args in (["--min-area", "5"], ["--format", "coco", "--min-score", "1.5"], ["--format", "nope"],
                 ["--format", "webdataset", "--shard-size", "0"]):
        result = export(tmp_path / "out", tmp_path / "x", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, args
    result = export(tmp_path / "missing", tmp_path / "x", "--format", "coco")
    assert result.returncode == 2 and result.stderr.startswith("error:") and not (tmp_path / "x").exists()


def names_listed(text: str, conjunction: str) -> list[str]:
    """The names in a list such as `coco, sa1b or hf`."""
    return re.split(f", | {conjunction} ", text)


def test_the_command_offers_and_describes_every_format_of_the_table():
    result = subprocess.run([sys.executable, EXPORT, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())  # as wrapped on the terminal
    assert f"--format {{{','.join(f.name for f in FORMATS)}}}" in shown
    for fmt in FORMATS:
        assert f" {fmt.name} {fmt.description} " in shown
    shard_size = re.search(r"--shard-size SHARD_SIZE images per file of --format (.+?) \(default 1000\)", shown)
    assert names_listed(shard_size[1], "and") == [f.name for f in FORMATS if f.sharded]


def test_filters_are_refused_by_the_formats_the_table_says_annotate_nothing(tmp_path):
    output, _ = scored_output(tmp_path)
    for fmt in FORMATS:
        result = export(output, tmp_path / fmt.name, "--format", fmt.name, "--min-area", "60")
        if fmt.filters:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode == 2 and not (tmp_path / fmt.name).exists()
            refusal = re.fullmatch(r"error: --min-area, --min-score and --min-stability choose annotations: "
                                   r"use them with --format (.+) \(see --help\)\n", result.stderr)
            assert names_listed(refusal[1], "or") == [f.name for f in FORMATS if f.filters]


def test_hostile_ids_stay_inside_the_export_folder_in_every_format(tmp_path):
    ids = ["../x", "a/b.jpg", "a/b.jpg", "/abs.png", "..", "c.d.e", "nul\x00"]
    write_files(tmp_path / "in", {"p.png": encoded(photo(24, 16, seed=3))})
    labels = blocks(16, 24)
    write_output(tmp_path / "out", [scored_row(i, tmp_path / "in" / "p.png", labels, {k: (1, 1) for k in range(4)})
                                    for i in ids])
    out = tmp_path / "deep" / "er"
    for fmt in ("png", "coco", "sa1b", "webdataset"):
        result = export(tmp_path / "out", out / fmt, "--format", fmt)
        assert result.returncode == 0, result.stderr
    assert written_outside(tmp_path, out) == [] and not (tmp_path / "deep" / "x.json").exists()
    assert sorted(p.relative_to(out / "sa1b").as_posix() for p in (out / "sa1b").rglob("*.json")) == sorted(
        ["%2E%2E/x.json", "a/b.jpg.json", "a/b.jpg~2.json", "%/abs.png.json", "%2E%2E.json", "c.d.e.json",
         "nul%00.json"])
    assert "1 id(s) written as NAME~N" in export(tmp_path / "out", out / "again", "--format", "sa1b").stderr
    coco = COCO(str(out / "coco" / "annotations.json"))
    assert [image["file_name"] for image in coco.dataset["images"]] == ids  # ids are values, kept as they are
    samples = list(wds.WebDataset(str(out / "webdataset" / "shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{n:09d}" for n in range(1, len(ids) + 1)]
    assert [json.loads(s["json"])["id"] for s in samples] == ids


def test_rows_whose_photo_is_gone_are_reported_not_exported(tmp_path):
    output = output_with_lost_photos(tmp_path, ["a.png", "b.png", "c.png"])
    result = export(output, tmp_path / "wds", "--format", "webdataset")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("1 sample(s) written") and "; 2 row(s) skipped (first: " in last
    assert "a.png: cannot read " in last  # the first one, as repr
    samples = list(wds.WebDataset(str(tmp_path / "wds" / "shard-000000.tar"), shardshuffle=False))
    assert [json.loads(s["json"])["id"] for s in samples] == ["c.png"]
    assert export(output, tmp_path / "coco", "--format", "coco").returncode == 0  # needs no photo
