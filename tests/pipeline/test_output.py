import io
import json

import pyarrow.parquet as pq
import pytest

from pipeline.output import METADATA_KEY, SCHEMA, OutputConflict, OutputDataset, Row, encode_shard, read_provenance
from pipeline.storage import Location


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
                                    "status": "error", "error": "cannot decode image"}
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
    assert read_provenance(Location(str(tmp_path)), "sub/s1.parquet")["run_id"] == "r1"


def test_an_output_refuses_settings_other_than_its_own(tmp_path):
    dataset = OutputDataset(Location(str(tmp_path)))
    dataset.claim({"config_hash": "a", "model": {"model": "tiny"}})
    dataset.claim({"config_hash": "a", "model": {"model": "tiny"}})
    dataset.check({"config_hash": "a"})
    with pytest.raises(OutputConflict, match="already holds masks made with a different config_hash, model"):
        dataset.claim({"config_hash": "b", "model": {"model": "other"}})
    assert json.loads((tmp_path / "_diffseg.json").read_text())["config_hash"] == "a"
