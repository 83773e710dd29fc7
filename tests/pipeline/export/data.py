"""Job outputs for export tests, written through `OutputDataset` with known label maps, sources and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffseg import DiffSegConfig
from diffseg.regions import regions
from diffseg.visualize import label_png
from pipeline.store.dataset import MANIFEST, SCHEMA, OutputDataset, Row
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.pipeline.labeling.data import encoded, write_files


def blocks(height: int, width: int, labels: int = 4) -> np.ndarray:
    """An `(H, W)` label map of `labels` vertical bands (label i is band i), with a ring of label 0 around a hole
    of the last label in the middle: segments of several shapes and sizes."""
    array = (np.arange(width)[None, :] * labels // width).repeat(height, axis=0)
    array[height // 4:3 * height // 4, width // 4:3 * width // 4] = 0
    array[3 * height // 8:5 * height // 8, 3 * width // 8:5 * width // 8] = labels - 1
    return array


def scored_row(image_id: str, source: Path | str, labels: np.ndarray, scores: dict[int, tuple[float, float]]) -> Row:
    """The ok row of `labels` read from `source`, segment i with `(score, stability) = scores[i]`."""
    segments = [{"id": r.id, "area": r.area, "bbox": list(r.bbox), "score": scores[r.id][0],
                 "stability": scores[r.id][1]} for r in regions(labels)]
    return Row(image_id, str(source), width=labels.shape[1], height=labels.shape[0], mask=label_png(labels),
               num_segments=len(segments), segments=segments)


def write_output(output: Path, rows: list[Row], config: DiffSegConfig = DiffSegConfig()) -> None:
    """A job output of one shard holding `rows`, with the manifest of a job run with `config`."""
    dataset = OutputDataset(Location(str(output)))
    dataset.claim({"config": config.to_dict(), "columns": {"image": None, "id": None}})
    dataset.write("part-00000", rows, {"run_id": "r"})


def write_output_before_scores(output: Path, rows: list[Row]) -> None:
    """A job output as written before segments had `score` and `stability`: those struct fields absent."""
    kind = pa.list_(pa.struct([("id", pa.int32()), ("area", pa.int64()), ("bbox", pa.list_(pa.int32()))]))
    schema = SCHEMA.set(SCHEMA.get_field_index("segments"), pa.field("segments", kind))
    columns = {name: [getattr(row, name) for row in rows] for name in schema.names}
    columns["segments"] = [[{k: s[k] for k in ("id", "area", "bbox")} for s in row.segments or []] for row in rows]
    output.mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), output / "part-00000.parquet")
    (output / MANIFEST).write_text('{"config": {}, "columns": {"image": null, "id": null}}')


def output_with_lost_photos(folder: Path, names: list[str]) -> Path:
    """An output of `names` (32x24 photos under `folder/in`) whose first photo is then deleted and second replaced
    by garbage; returns the output folder."""
    write_files(folder / "in", {name: encoded(photo(32, 24, seed=i + 1)) for i, name in enumerate(names)})
    write_output(folder / "out", [scored_row(name, folder / "in" / name, blocks(24, 32), {k: (1, 1) for k in range(4)})
                                  for name in names])
    (folder / "in" / names[0]).unlink()
    (folder / "in" / names[1]).write_bytes(b"garbage")
    return folder / "out"
