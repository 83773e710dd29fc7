import dataclasses
import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from diffseg.visualize import label_png
from pipeline.store.dataset import (
    FILE,
    METADATA_KEY,
    SCHEMA,
    OutputConflict,
    OutputDataset,
    Row,
    decode_mask,
    encode_shard,
)
from pipeline.store.inputs import SourceFile
from pipeline.store.location import Location, StorageError


def rows() -> list[Row]:
    return [Row("a.png", "file:///in/a.png", width=4, height=3, mask=b"png", num_segments=1,
                segments=[{"id": 0, "area": 12, "bbox": [0, 0, 4, 3]}]),
            Row.failed("b.png", "file:///in/b.png", "cannot decode image")]


def test_a_shard_file_has_the_schema_rows_and_provenance():
    data = encode_shard(rows(), {"run_id": "r1", "config_hash": "abc"})
    table = pq.read_table(io.BytesIO(data))
    assert table.schema.remove_metadata() == SCHEMA
    assert table.to_pylist()[1] == {"image_id": "b.png", "source_uri": "file:///in/b.png", "width": None,
                                    "height": None, "mask": None, "num_segments": None, "segments": None,
                                    "status": "error", "error": "cannot decode image", "descriptors": None,
                                    "warning": None}
    footer = pq.read_metadata(io.BytesIO(data)).metadata
    assert json.loads(footer[METADATA_KEY.encode()]) == {"run_id": "r1", "config_hash": "abc"}


def test_writing_a_shard_writes_the_file_then_its_marker(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    assert dataset.done() == set()
    dataset.write("sub/s1", rows(), {"run_id": "r1", "created": "now"})
    assert dataset.done() == {"sub/s1"}
    marker = json.loads((tmp_path / "_done" / "sub" / "s1.json").read_text())
    assert marker == {"shard": "sub/s1", "file": "sub/s1.parquet", "rows": 2, "images_ok": 1, "images_failed": 1,
                      "run_id": "r1", "created": "now"}
    assert dataset.provenance("sub/s1.parquet") == {"run_id": "r1", "created": "now"}


def test_an_output_refuses_settings_other_than_its_own(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    dataset.claim({"config_hash": "a", "model": {"model": "tiny"}})
    dataset.claim({"config_hash": "a", "model": {"model": "tiny"}})
    dataset.check({"config_hash": "a"})
    with pytest.raises(OutputConflict, match="already holds masks made with a different config_hash, model"):
        dataset.claim({"config_hash": "b", "model": {"model": "other"}})
    assert json.loads((tmp_path / "_diffseg.json").read_text())["config_hash"] == "a"


def test_rows_written_are_read_back_with_the_columns_asked_for(tmp_path):
    mask = torch.tensor([[0, 1], [2, 2]])
    writer = OutputDataset(Location(str(tmp_path)))
    writer.write("part-0", [Row("a.png", "file:///a.png", 2, 2, label_png(mask), 3, [])], {"run_id": "r1"})
    writer.write("sub/s1", rows(), {"run_id": "r2"})
    (tmp_path / "_tmp-1234-part-1.parquet").write_bytes(b"half a file")  # an interrupted write: skipped
    output = OutputDataset(Location(str(tmp_path)))
    read = list(output.rows(["image_id", "status", FILE], batch_size=1))
    assert sorted(tuple(row.values()) for row in read) == [
        ("a.png", "ok", "part-0.parquet"), ("a.png", "ok", "sub/s1.parquet"), ("b.png", "error", "sub/s1.parquet")]
    assert output.column("image_id") == [row["image_id"] for row in read]
    first = next(position for position, row in enumerate(read) if row[FILE] == "part-0.parquet")
    assert output.take([2, first], ["image_id", "status", FILE]) == [read[2], read[first]]
    [row] = output.take([first], ["mask", "width", "height"])
    assert (row["width"], row["height"]) == (2, 2) and np.array_equal(decode_mask(row["mask"]), mask.numpy())
    assert output.provenance(read[first][FILE]) == {"run_id": "r1"}


@pytest.mark.parametrize("old_first", [True, False])
def test_files_written_before_segment_scores_read_with_null_scores_beside_newer_ones(tmp_path, old_first):
    """Outputs written before `stability` and `score` existed stay readable, also resumed by this version."""
    before = pa.schema([field if field.name != "segments" else
                        pa.field("segments", pa.list_(pa.struct([("id", pa.int32()), ("area", pa.int64()),
                                                                  ("bbox", pa.list_(pa.int32()))])))
                        for field in SCHEMA])
    old = {name: [getattr(rows()[0], name)] for name in before.names}
    new = [Row("n.png", "file:///in/n.png", 4, 3, b"png", 1,
               [{"id": 0, "area": 12, "bbox": [0, 0, 4, 3], "stability": 0.75, "score": 0.5}])]
    names = ("a-old", "b-new") if old_first else ("b-old", "a-new")  # pyarrow lists files in name order
    pq.write_table(pa.Table.from_pydict(old, schema=before), tmp_path / f"{names[0]}.parquet")
    OutputDataset(Location(str(tmp_path))).write(names[1], new, {"run_id": "r"})
    segments = {row["image_id"]: row["segments"] for row in OutputDataset(Location(str(tmp_path))).rows(
        ["image_id", "segments"])}
    assert segments == {"a.png": [{"id": 0, "area": 12, "bbox": [0, 0, 4, 3], "stability": None, "score": None}],
                        "n.png": [{"id": 0, "area": 12, "bbox": [0, 0, 4, 3], "stability": 0.75, "score": 0.5}]}


def test_files_written_before_warnings_read_with_a_null_warning_beside_newer_ones(tmp_path):
    before = pa.schema([field for field in SCHEMA if field.name != "warning"])
    pq.write_table(pa.Table.from_pylist([dataclasses.asdict(rows()[0])], schema=before), tmp_path / "a-old.parquet")
    new = dataclasses.replace(rows()[0], image_id="n.png", warning="the cut stopped at its work bound")
    OutputDataset(Location(str(tmp_path))).write("b-new", [new], {"run_id": "r"})
    read = OutputDataset(Location(str(tmp_path))).rows(["image_id", "warning"])
    assert sorted(tuple(row.values()) for row in read) == [("a.png", None),
                                                           ("n.png", "the cut stopped at its work bound")]


@pytest.mark.parametrize("top", [255, 65535], ids=["8-bit", "16-bit"])
def test_a_mask_decodes_to_the_label_map_it_was_made_from(top):
    labels = torch.tensor([[0, top, 1], [top, 2, 0]])
    decoded = decode_mask(label_png(labels))
    assert decoded.dtype == np.int64 and np.array_equal(decoded, labels.numpy())


def test_the_manifest_is_what_was_claimed(tmp_path):
    output = OutputDataset(Location(str(tmp_path)))
    output.claim({"config_hash": "a", "model": {"model": "tiny"}})
    assert output.manifest() == {"config_hash": "a", "model": {"model": "tiny"}}


def test_a_missing_or_broken_output_is_a_storage_error_naming_it(tmp_path):
    url = re.escape(str(tmp_path))
    missing = OutputDataset(Location(str(tmp_path / "missing")))
    with pytest.raises(StorageError, match=f"^{url}/missing: not a labeling job's output \\(no _diffseg.json\\)$"):
        missing.manifest()
    with pytest.raises(StorageError, match=f"^{url}/missing: cannot read the masks"):
        missing.column("image_id")
    with pytest.raises(StorageError, match=f"^{url}/missing: cannot read the provenance of s.parquet"):
        missing.provenance("s.parquet")
    (tmp_path / "_diffseg.json").write_text("{not json")
    (tmp_path / "s.parquet").write_bytes(b"not parquet")
    broken = OutputDataset(Location(str(tmp_path)))
    with pytest.raises(StorageError, match=f"^{url}: cannot read _diffseg.json"):
        broken.check({"config_hash": "a"})
    with pytest.raises(StorageError, match=f"^{url}: cannot read the masks"):
        list(broken.rows(["image_id"]))


def shard_provenance(*files: tuple[str, int, str | None, float | None]) -> dict:
    """A worker's provenance for a shard of `files` (key, size, etag, mtime) of the input `file:///in`."""
    return {"run_id": "r1", "input": "file:///in",
            "shard": {"format": "images", "files": [{"key": key, "uri": f"file:///in/{key}", "size": size,
                                                     "etag": etag, "mtime": mtime}
                                                    for key, size, etag, mtime in files]}}


def covered_files(dataset: OutputDataset, finished: list[str]) -> list[list[tuple[str, str, SourceFile]]]:
    return [list(sequence) for sequence in dataset.covered(finished)]


def test_markers_record_the_input_files_their_shard_covers(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    assert covered_files(dataset, []) == []
    dataset.write("part-00000", rows(), shard_provenance(("a.png", 10, None, 1.5), ("b.png", 20, "e2", None)))
    dataset.write("sub/x", rows(), shard_provenance(("sub/x.tar", 30, "e3", None)))
    marker = json.loads((tmp_path / "_done" / "part-00000.json").read_text())
    assert marker["files"] == [{"key": "a.png", "size": 10, "etag": None, "mtime": 1.5},
                               {"key": "b.png", "size": 20, "etag": "e2", "mtime": None}]
    assert dict(dataset.markers(["part-00000", "sub/x"])) == {
        "part-00000": (SourceFile("a.png", 10, None, 1.5), SourceFile("b.png", 20, "e2")),
        "sub/x": (SourceFile("sub/x.tar", 30, "e3"),)}
    assert covered_files(dataset, ["part-00000", "sub/x"]) == [[
        ("a.png", "part-00000", SourceFile("a.png", 10, None, 1.5)),
        ("b.png", "part-00000", SourceFile("b.png", 20, "e2")),
        ("sub/x.tar", "sub/x", SourceFile("sub/x.tar", 30, "e3"))]]


def test_the_shards_of_each_run_are_one_key_ordered_sequence_read_a_few_markers_at_a_time(tmp_path, monkeypatch):
    dataset = OutputDataset(Location(str(tmp_path)))
    dataset.start_run("part-00000")
    for number, keys in enumerate((["a.png", "c.png"], ["e.png", "g.png"])):
        dataset.write(f"part-{number:05d}", rows(), shard_provenance(*((key, 1, None, None) for key in keys)))
    dataset.start_run("part-00002")  # a later run: its new files sort among the first run's
    for number, keys in enumerate((["b.png"], ["d.png", "f.png"]), start=2):
        dataset.write(f"part-{number:05d}", rows(), shard_provenance(*((key, 1, None, None) for key in keys)))
    monkeypatch.setattr("pipeline.store.dataset.MARKERS_AT_ONCE", 1)
    finished = ["part-00000", "part-00001", "part-00002", "part-00003"]
    first, second = dataset.covered(finished)
    assert next(first)[:2] == ("a.png", "part-00000") and next(second)[:2] == ("b.png", "part-00002")
    assert [key for key, *_ in first] == ["c.png", "e.png", "g.png"]
    assert [(key, shard) for key, shard, _ in second] == [("d.png", "part-00003"), ("f.png", "part-00003")]


def test_image_shards_written_before_runs_were_recorded_are_read_at_once_and_sorted(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    for number, keys in enumerate((["a.png", "c.png"], ["b.png"])):  # two runs, the second's file among the first's
        dataset.write(f"part-{number:05d}", rows(), shard_provenance(*((key, 1, None, None) for key in keys)))
    dataset.start_run("part-00002")
    dataset.write("part-00002", rows(), shard_provenance(("d.png", 1, None, None)))
    old, new = covered_files(dataset, ["part-00000", "part-00001", "part-00002"])
    assert [(key, shard) for key, shard, _ in new] == [("d.png", "part-00002")]
    assert [(key, shard) for key, shard, _ in old] == [("a.png", "part-00000"), ("b.png", "part-00001"),
                                                       ("c.png", "part-00000")]


def test_markers_of_one_run_out_of_key_order_are_refused(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    dataset.start_run("part-00000")
    for number, key in enumerate(("b.png", "a.png")):
        dataset.write(f"part-{number:05d}", rows(), shard_provenance((key, 1, None, None)))
    with pytest.raises(StorageError, match="part-00001.json lists 'a.png' after 'b.png', out of key order"):
        covered_files(dataset, ["part-00000", "part-00001"])


def test_markers_written_before_they_listed_files_are_completed_from_the_footer(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    provenance = shard_provenance(("a.png", 10, None, None))
    for file in provenance["shard"]["files"]:  # footers of that time had URIs, sizes and etags only
        del file["key"], file["mtime"]
    dataset.write("part-00000", rows(), provenance)
    marker = tmp_path / "_done" / "part-00000.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    assert dict(dataset.markers(["part-00000"])) == {"part-00000": (SourceFile("a.png", 10, None),)}
    dataset.write("part-00001", rows(), {"run_id": "r0"})
    with pytest.raises(StorageError, match="part-00001.parquet does not record which input files it covers"):
        covered_files(dataset, ["part-00000", "part-00001"])


def test_mask_files_without_a_marker_are_removed_as_a_stopped_run_left_them(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    dataset.write("part-00000", rows(), shard_provenance(("a.png", 10, None, None)))
    dataset.write("sub/part-00001", rows(), shard_provenance(("b.png", 10, None, None)))
    (tmp_path / "_done" / "sub" / "part-00001.json").unlink()
    (tmp_path / "_bookkeeping.parquet").write_bytes(b"readers skip it")
    assert dataset.remove_unfinished() == ["sub/part-00001.parquet"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet")) == [
        "_bookkeeping.parquet", "part-00000.parquet"]
    assert dataset.remove_unfinished() == []


def test_a_run_log_is_made_at_its_first_record_and_holds_one_json_value_a_line(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    log = dataset.ignored_log("r1")
    assert (log.uri, log.count) == ("", 0) and not (tmp_path / "_runs").exists(), "nothing written before a record"
    keys = ["a.txt", "../../etc/passwd", 'odd "key"\nwith a newline\u00e9.json']
    for key in keys:
        log.write({"key": key})
    log.close()
    log.close()
    assert log.uri == Location(str(tmp_path)).uri("_runs/r1.ignored.jsonl") and log.count == 3
    lines = (tmp_path / "_runs" / "r1.ignored.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"key": key} for key in keys], "keys are values, one a line"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "_runs/r1.ignored.jsonl"], "a key never names a file"
    with pytest.raises(ValueError, match="after it was closed"):
        log.write({"key": "late.txt"})
    with dataset.failure_log("r1") as failures:
        failures.add("part-00000", [{"image_id": "b.png", "source_uri": "file:///in/b.png", "error": "broken"}])
    assert json.loads((tmp_path / "_runs" / "r1.failures.jsonl").read_text()) == {
        "image_id": "b.png", "source_uri": "file:///in/b.png", "error": "broken", "shard": "part-00000"}
    empty = dataset.ignored_log("r2")
    empty.close()
    assert empty.uri == "" and not (tmp_path / "_runs" / "r2.ignored.jsonl").exists()


def test_a_marker_counts_the_rows_with_a_warning_when_there_are_some(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    warned = dataclasses.replace(rows()[0], image_id="w.png", warning="the cut stopped at its work bound")
    assert "images_warned" not in dataset.write("plain", rows(), {})
    assert dataset.write("warned", [*rows(), warned], {})["images_warned"] == 1
