"""The export loop: a job's output streamed row by row through one format's `Exporter`.

Rows are read a few at a time (`BATCH_ROWS`), so memory stays bounded whatever the size of the output. Each
ok row's own work (decoding its mask, encoding annotations, reading its photo) runs on a thread pool; the
format then writes the results one by one in the output's order, so file names and ids depend only on the
output. Rows with `status=error` are counted and skipped; a row the format cannot use (a photo gone, a mask
that does not decode) is reported and skipped: never a crash.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pyarrow.dataset as ds
from tqdm import tqdm

from diffseg.config import DiffSegConfig
from diffseg.methods import spoken

from ..store.dataset import OutputDataset, manifest_columns, manifest_config
from ..store.inputs import ParquetColumns
from ..store.location import Location, StorageError
from ..store.prefetch import pool_map
from .annotations import ExportError, Filters, Unusable, check_scores
from .formats import FORMATS

BATCH_ROWS = 16
"""Rows read at a time: masks are the large column."""


@dataclass(frozen=True)
class Settings:
    """What every format needs to know besides the rows."""

    out: Path
    """The local folder written."""
    filters: Filters
    config: DiffSegConfig
    """The settings the output was labeled with (the geometry of its masks)."""
    columns: ParquetColumns
    """The Parquet input columns it was labeled from (to read photos back)."""
    storage_options: dict[str, Any]
    rows: int
    """Rows in the output (for the progress bar)."""
    shard_size: int = 1000
    """Images per file (`webdataset` tar shards, `hf` Parquet files)."""


class Exporter(Protocol):
    """One export format. `convert` may run on several threads at once; `write` and `close` run on one, in the
    output's order."""

    settings: Settings
    columns: tuple[str, ...]
    """The output columns `convert` reads (besides `image_id` and `status`)."""

    def convert(self, number: int, row: dict[str, Any]) -> Any:
        """The row's export, ready to `write` (`number`: the row's 1-based position in the output).

        Raises:
            Unusable: the row cannot be exported.
        """

    def write(self, converted: Any) -> None:
        """Write what `convert` gave."""

    def close(self) -> str:
        """Finish the files; returns what was written, for the command's last line."""


@dataclass
class Tally:
    """What happened to the rows."""

    errors: int = 0
    """Rows with `status=error` (no mask)."""
    skipped: list[str] = field(default_factory=list)
    """`ID: reason` of the ok rows the format could not use."""

    def summary(self, written: str) -> str:
        """The command's last line, after `written` (what the format wrote)."""
        parts = [written]
        if self.errors:
            parts.append(f"{self.errors} row(s) with status=error skipped")
        if self.skipped:
            # repr: ids and reasons come from the data and may hold control characters
            parts.append(f"{len(self.skipped)} row(s) skipped (first: {self.skipped[0]!r})")
        return "; ".join(parts)


def renamed(count: int) -> str:
    """The last line's note on ids given a `~N` name by `FileNames`."""
    return f"{count} id(s) written as NAME~N so as not to overwrite another id's files"


def settings(location: Location, out: Path, filters: Filters, shard_size: int = 1000, per_segment: bool = False
             ) -> Settings:
    """The `Settings` to export the job output at `location` to `out`; `per_segment`: for a format made of the
    segments' annotations (coco, sa1b).

    Raises:
        StorageError: `location` is not a job's output or cannot be read.
        ExportError: `filters` need scores the output does not have, or a per-segment format is asked of a
            pseudo-class output (`jobs/cluster.py`), whose masks hold classes and which has no segments to annotate.
    """
    manifest = OutputDataset(location).manifest()
    if per_segment and manifest.get("kind") == "pseudo-classes":
        whole = spoken([f.name for f in FORMATS if not f.per_segment], "or")
        raise ExportError(f"{location.url} holds pseudo-class masks, not per-image segments to annotate one by one: "
                          f"export them with --format {whole}")
    rows, fields = survey(location)
    check_scores(fields, filters)
    return Settings(out, filters, manifest_config(manifest), manifest_columns(manifest), location.storage_options,
                    rows, shard_size)


def survey(location: Location) -> tuple[int, set[str]]:
    """The rows in the output's mask files, and the fields the `segments` entries have in every one of them
    (an output with files written before scores existed lacks those), from the files' footers.

    Raises:
        StorageError: the mask files cannot be read.
    """
    rows, fields = 0, None
    try:
        for fragment in _dataset(location).get_fragments():
            metadata = fragment.metadata
            rows += metadata.num_rows
            schema = metadata.schema.to_arrow_schema()
            kind = schema.field("segments").type.value_type if "segments" in schema.names else None
            found = {kind.field(index).name for index in range(kind.num_fields)} if kind else set()
            fields = found if fields is None else fields & found
    except (OSError, ValueError) as error:
        raise StorageError(f"{location.url}: cannot read the masks ({error})") from None
    return rows, fields or set()


def export(location: Location, exporter: Exporter, workers: int = 4, progress: bool = True) -> tuple[Tally, str]:
    """Stream every row of the job output at `location` through `exporter` with `workers` threads, then close it;
    returns the tally and what the format wrote.

    Raises:
        StorageError: the mask files cannot be read.
        OSError: the files cannot be written.
    """
    tally = Tally()
    total = exporter.settings.rows
    with tqdm(total=total, unit="image", file=sys.stderr, disable=not progress, mininterval=1.0) as bar:
        rows = _ok_rows(OutputDataset(location), ("image_id", *exporter.columns), tally, bar)
        with ThreadPoolExecutor(workers) as pool:
            for row, converted, error in pool_map(partial(_convert, exporter), rows, pool, 2 * workers):
                if error is not None:
                    tally.skipped.append(f"{row['image_id']}: {error}")
                else:
                    exporter.write(converted)
    return tally, exporter.close()


def _convert(exporter: Exporter, item: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], Any, Unusable | None]:
    """`(row, converted, None)` for a numbered row, or `(row, None, why)` when it cannot be exported."""
    number, row = item
    try:
        return row, exporter.convert(number, row), None
    except Unusable as error:
        return row, None, error


def _ok_rows(dataset: OutputDataset, columns: tuple[str, ...], tally: Tally,
             bar: tqdm) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(number, row)` of each ok row, `number` its 1-based position in the output; counts the others."""
    for number, row in enumerate(dataset.rows(("status", *dict.fromkeys(columns)), BATCH_ROWS), start=1):
        bar.update()
        if row["status"] == "ok":
            yield number, row
        else:
            tally.errors += 1


def _dataset(location: Location) -> ds.Dataset:
    """The output's mask files as one Arrow dataset, for their footers (rows go through `OutputDataset`)."""
    return ds.dataset(location.root, format="parquet", filesystem=location.fs)
