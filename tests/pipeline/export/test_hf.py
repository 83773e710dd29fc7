"""`--format hf`: Parquet files read back with Hugging Face `datasets` (`load_dataset(DIR)` and the `parquet`
builder): masks decode to the output's label maps, photos line up with them, segments and filters as in the
other formats, photos from files, tar members and Parquet rows."""

import io
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffseg import DiffSegConfig
from pipeline.export.annotations import Filters
from pipeline.export.hf import HfExporter
from pipeline.export.rows import export as export_rows
from pipeline.export.rows import settings
from pipeline.store.dataset import decode_mask
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.jobs.test_export import RESOLUTION, as_labeled, export, label_in_process, rotated_jpeg, tar_of
from tests.pipeline.export.data import blocks, output_with_lost_photos, scored_row, write_output
from tests.pipeline.labeling.data import encoded, good_images, parquet_bytes, read_output, write_files

FEATURES = datasets.Features({
    "image_id": datasets.Value("string"), "image": datasets.Image(), "mask": datasets.Image(),
    "segments": [{"id": datasets.Value("int32"), "area": datasets.Value("int64"),
                  "bbox": [datasets.Value("int32")], "score": datasets.Value("float32"),
                  "stability": datasets.Value("float32")}]})


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """Three inputs labeled by the tiny model into `out-files`, `out-tar` and `out-parquet`: a folder of photos
    (one stored turned by EXIF, one broken), a WebDataset tar and a Parquet file as `datasets` writes them."""
    root = tmp_path_factory.mktemp("labeled")
    config = DiffSegConfig(resolution=RESOLUTION)
    write_files(root / "files", {**good_images(3), "sub/rotated.jpg": rotated_jpeg(96, 64), "broken.png": b"nope"})
    members = {f"s/{i}.jpg": encoded(photo(40 + 8 * i, 32, seed=i), "JPEG") for i in range(3)}
    write_files(root / "tar", {"shard.tar": tar_of(list(members.items()))})
    write_files(root / "parquet", {"data.parquet": parquet_bytes(good_images(5), "datasets")})
    for kind in ("files", "tar", "parquet"):
        label_in_process(root / kind, root / f"out-{kind}", config)
    return root


def load(folder: Path, cache: Path, how: str) -> datasets.Dataset:
    """The export in `folder` as `datasets` loads it, `how`: "folder" (`load_dataset(DIR)`) or "parquet"."""
    if how == "folder":
        return datasets.load_dataset(str(folder), split="train", cache_dir=str(cache))
    return datasets.load_dataset("parquet", data_dir=str(folder), split="train", cache_dir=str(cache))


def ok_rows(output: Path) -> dict[str, dict]:
    return {row["image_id"]: row for row in read_output(str(output)) if row["status"] == "ok"}


def export_in_process(output: Path, out: Path, filters: Filters = Filters(), shard_size: int = 1000) -> str:
    """Export `output` to `out` with `HfExporter` and 2 threads; returns what it wrote."""
    location = Location(str(output))
    tally, written = export_rows(location, HfExporter(settings(location, out, filters, shard_size)), 2, False)
    assert not tally.skipped, tally.skipped
    return written


def assert_rows_match(loaded: datasets.Dataset, rows: dict[str, dict]) -> None:
    """Every ok row once, its mask decoding to the output's label map, its photo of the mask's size and its
    segments the output's."""
    assert loaded.features == FEATURES
    assert sorted(loaded["image_id"]) == sorted(rows)
    for record in loaded:
        row = rows[record["image_id"]]
        labels = decode_mask(row["mask"])
        assert isinstance(record["mask"], Image.Image) and np.array_equal(np.asarray(record["mask"]), labels)
        assert record["image"].size == (row["width"], row["height"]) == labels.shape[::-1]
        assert [(s["id"], s["area"], s["bbox"]) for s in record["segments"]] == \
            [(s["id"], s["area"], s["bbox"]) for s in row["segments"]]
        for found, segment in zip(record["segments"], row["segments"]):
            assert found["score"] == pytest.approx(segment["score"]) and \
                found["stability"] == pytest.approx(segment["stability"])


@pytest.mark.parametrize("how", ["folder", "parquet"])
def test_the_export_loads_in_datasets_with_masks_photos_and_segments(labeled, tmp_path, how):
    result = export(labeled / "out-files", tmp_path / "hf", "--format", "hf", "--shard-size", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"4 row(s) written to {tmp_path / 'hf'} in 2 Parquet file(s) data/train-NNNNN-of-NNNNN.parquet; "
        "1 row(s) with status=error skipped")
    assert sorted(p.relative_to(tmp_path / "hf").as_posix() for p in (tmp_path / "hf").rglob("*")) == [
        "data", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    loaded = load(tmp_path / "hf", tmp_path / "cache", how)
    assert loaded.num_rows == 4
    assert_rows_match(loaded, ok_rows(labeled / "out-files"))
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    for record in raw:
        source = (labeled / "files" / record["image_id"]).read_bytes()
        if record["image_id"] == "sub/rotated.jpg":  # turned by EXIF: the photo as labeled, losslessly
            shown = Image.open(io.BytesIO(record["image"]["bytes"]))
            assert shown.format == "PNG" and np.array_equal(np.asarray(shown), np.asarray(as_labeled(source)))
        else:  # stored as labeled: the source's own bytes
            assert record["image"]["bytes"] == source


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_photos_of_tar_members_and_parquet_rows_are_their_own_bytes(labeled, tmp_path, kind):
    assert export_in_process(labeled / f"out-{kind}", tmp_path / "hf").startswith(
        f"{3 if kind == 'tar' else 5} row(s) written")
    rows = ok_rows(labeled / f"out-{kind}")
    loaded = load(tmp_path / "hf", tmp_path / "cache", "folder")
    assert_rows_match(loaded, rows)
    sources = dict(tar_members(labeled / "tar" / "shard.tar")) if kind == "tar" else \
        {str(i): data for i, data in enumerate(good_images(5).values())}  # PARQUET#ROW
    for record in loaded.cast_column("image", datasets.Image(decode=False)):
        member = rows[record["image_id"]]["source_uri"].rpartition("#")[2]
        assert record["image"]["bytes"] == sources[member]


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]


def test_the_schema_declares_the_features_without_datasets(labeled, tmp_path):
    export_in_process(labeled / "out-tar", tmp_path / "hf")
    [file] = (tmp_path / "hf" / "data").iterdir()
    assert datasets.Features.from_arrow_schema(pq.read_schema(file)) == FEATURES
    assert pq.read_schema(file).remove_metadata() == FEATURES.arrow_schema.remove_metadata()


def test_filters_choose_the_segments_and_leave_the_masks(tmp_path):
    write_files(tmp_path / "in", {"a.png": encoded(photo(32, 24, seed=1)), "b.png": encoded(photo(40, 20, seed=2))})
    scores = {i: (0.2 * i, 1 - 0.2 * i) for i in range(4)}
    rows = [scored_row("a.png", tmp_path / "in" / "a.png", blocks(24, 32), scores),
            scored_row("b.png", tmp_path / "in" / "b.png", blocks(20, 40), scores)]
    write_output(tmp_path / "out", rows)
    kept = {row.image_id: [s["id"] for s in row.segments if s["area"] >= 60 and s["score"] >= 0.39
                           and s["stability"] >= 0.39] for row in rows}
    assert all(0 < len(ids) < 4 for ids in kept.values())  # the filters drop some segments, not all
    export_in_process(tmp_path / "out", tmp_path / "hf", Filters(60, 0.39, 0.39))
    for record in load(tmp_path / "hf", tmp_path / "cache", "folder"):
        row = next(r for r in rows if r.image_id == record["image_id"])
        assert [s["id"] for s in record["segments"]] == kept[row.image_id]
        assert [s["area"] for s in record["segments"]] == \
            [s["area"] for s in row.segments if s["id"] in kept[row.image_id]]
        assert np.array_equal(np.asarray(record["mask"]), decode_mask(row.mask))  # masks unchanged


def test_rows_whose_photo_is_gone_are_reported_and_left_out(tmp_path):
    output = output_with_lost_photos(tmp_path, ["a", "b", "c"])
    result = export(output, tmp_path / "hf", "--format", "hf")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("1 row(s) written") and "; 2 row(s) skipped (first: " in last
    assert "a: cannot read " in last  # the first one, as repr
    assert load(tmp_path / "hf", tmp_path / "cache", "folder")["image_id"] == ["c"]
    (tmp_path / "in" / "c").unlink()  # nothing left to export: no file (datasets refuses an empty split)
    result = export(output, tmp_path / "empty", "--format", "hf")
    assert result.returncode == 1 and "0 row(s) written" in result.stderr
    assert list((tmp_path / "empty" / "data").iterdir()) == []


def test_files_hold_shard_size_rows_in_bounded_row_groups(tmp_path, monkeypatch):
    write_files(tmp_path / "in", {"p.png": encoded(photo(32, 24, seed=1))})
    ids = [f"{n}.png" for n in range(5)]
    write_output(tmp_path / "out", [scored_row(i, tmp_path / "in" / "p.png", blocks(24, 32),
                                               {k: (1, 1) for k in range(4)}) for i in ids])
    monkeypatch.setattr("pipeline.export.hf.ROW_GROUP_ROWS", 2)
    export_in_process(tmp_path / "out", tmp_path / "hf", shard_size=3)
    files = sorted((tmp_path / "hf" / "data").iterdir())
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    groups = [[pq.ParquetFile(f).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(f).num_row_groups)]
              for f in files]
    assert groups == [[2, 1], [2]]
    assert load(tmp_path / "hf", tmp_path / "cache", "folder")["image_id"] == ids  # the output's order
