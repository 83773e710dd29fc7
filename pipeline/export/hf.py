"""`hf`: Parquet files that Hugging Face `datasets` loads as one `train` split, `image` and `mask` as images.

`data/train-00000-of-0000N.parquet`, ... of `shard_size` rows each, in the output's order (the Hub's layout,
so the folder can be uploaded as a dataset repository as is). Columns:

- `image_id`: the row's id.
- `image`: the photo whose pixel (x, y) is the mask's pixel (x, y), as `webdataset` gives it: the source's own
  bytes when stored as labeled, else the photo as labeled, as PNG.
- `mask`: the label map, the stored PNG as is (8-bit, 16-bit above 256 segments).
- `segments`: `[{"id", "area", "bbox", "score", "stability"}]`, the segments the filters keep; the mask keeps
  every label, so a label missing from the list is one to ignore. Scores are null in outputs labeled before
  they existed.

`image` and `mask` are structs `{bytes, path}` (path null) and the schema's `huggingface` metadata declares
them `datasets.Image()`, which is how `datasets` knows to decode them; that metadata is written as plain JSON,
so exporting needs no `datasets`. Lists are declared in the older `[feature]` form, which `datasets` 3 and later
all read. A row whose photo cannot be read any more, or no longer has the mask's size, is reported and left out.
Rows are written in row groups of at most `ROW_GROUP_ROWS` rows or `ROW_GROUP_BYTES` bytes, so memory stays
bounded; each file is written under a hidden temporary name (which `datasets` ignores) and given its final
name, which holds the number of files, once all are complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .annotations import SCORES, row_labels
from .rows import Settings
from .webdataset import training_photo

ROW_GROUP_ROWS = 100
"""Rows per Parquet row group at most (what `datasets` itself writes for image datasets)."""
ROW_GROUP_BYTES = 64 << 20
"""Image bytes per row group at most: photos may be large, and a row group is held in memory until written."""

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_SEGMENT = pa.struct([("id", pa.int32()), ("area", pa.int64()), ("bbox", pa.list_(pa.int32())),
                      ("score", pa.float32()), ("stability", pa.float32())])


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


FEATURES = {
    "image_id": _value("string"),
    "image": {"_type": "Image"},
    "mask": {"_type": "Image"},
    "segments": [{"id": _value("int32"), "area": _value("int64"), "bbox": [_value("int32")],
                  "score": _value("float32"), "stability": _value("float32")}],
}
"""The columns as `datasets.Features.to_dict()` writes them, in the form every `datasets` version reads."""
SCHEMA = pa.schema([("image_id", pa.string()), ("image", _IMAGE), ("mask", _IMAGE), ("segments", pa.list_(_SEGMENT))],
                   metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})})


class HfExporter:
    columns = ("source_uri", "mask", "segments")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.out / "data"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files = 0
        self.rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.group: list[dict[str, Any]] = []
        self.group_bytes = 0

    def convert(self, number: int, row: dict[str, Any]) -> dict[str, Any]:
        height, width = row_labels(row).shape  # the size the photo must have
        _, photo = training_photo(row["source_uri"], (height, width), self.settings)
        segments = [{"id": s["id"], "area": s["area"], "bbox": s["bbox"], **{name: s.get(name) for name in SCORES}}
                    for s in row["segments"] or [] if self.settings.filters.keeps(s)]
        return {"image_id": row["image_id"], "image": {"bytes": photo, "path": None},
                "mask": {"bytes": row["mask"], "path": None}, "segments": segments}

    def write(self, converted: dict[str, Any]) -> None:
        if self.rows % self.settings.shard_size == 0:
            self._finish_file()
            self.writer = pq.ParquetWriter(self._partial(self.files), SCHEMA)
            self.files += 1
        self.group.append(converted)
        self.group_bytes += len(converted["image"]["bytes"]) + len(converted["mask"]["bytes"])
        if len(self.group) >= ROW_GROUP_ROWS or self.group_bytes >= ROW_GROUP_BYTES:
            self._flush()
        self.rows += 1

    def close(self) -> str:
        self._finish_file()
        for index in range(self.files):
            os.replace(self._partial(index), self.folder / f"train-{index:05d}-of-{self.files:05d}.parquet")
        return (f"{self.rows} row(s) written to {self.settings.out} in {self.files} Parquet file(s) "
                "data/train-NNNNN-of-NNNNN.parquet")

    def _flush(self) -> None:
        if self.group:
            self.writer.write_table(pa.Table.from_pylist(self.group, schema=SCHEMA))
            self.group, self.group_bytes = [], 0

    def _finish_file(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None

    def _partial(self, index: int) -> Path:
        return self.folder / f".train-{index:05d}.parquet.partial"
