"""Input datasets as shards: folders of image files, WebDataset `.tar` shards, or Parquet files of image bytes.

A shard is the unit of work and of output: one input shard gives one mask Parquet file. Planning is
deterministic: the same input always gives the same shards, with the same names. An input that grows is compared
with what earlier runs recorded (`compare`): only its new files make new shards, so no file is labeled twice.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from diffseg.defaults import IMAGE_SUFFIXES

from .storage import Location

FORMATS = ("auto", "images", "tar", "parquet")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")
"""Columns tried, in order, for the image bytes of Parquet inputs when no column is named."""
ID_COLUMN = "key"
"""Column used for image ids of Parquet inputs when present and no column is named (img2dataset's)."""

_SUFFIX_FORMATS = {**{suffix: "images" for suffix in IMAGE_SUFFIXES}, ".tar": "tar", ".parquet": "parquet"}


class InputError(ValueError):
    """The input cannot be planned; the message names it and says why in one line."""


@dataclass(frozen=True)
class SourceFile:
    """One input file, with what identifies its content version."""

    key: str
    """Path relative to the input root, '/'-separated."""
    size: int | None
    etag: str | None
    """Object-store entity tag, when the store gives one."""
    mtime: float | None = None
    """Modification time (seconds since the epoch), kept only where the store gives no etag (local disks): what
    tells a file rewritten at the same size (tars are padded to 10 KiB blocks) from the one a shard covers."""


@dataclass(frozen=True)
class Shard:
    """A unit of work: some input files whose images go to one output file."""

    name: str
    """Output name without suffix: `part-00000` for image folders (numbered on after an output's finished shards),
    the file's key without suffix otherwise."""
    format: str
    """"images" (files are images), "tar" (one WebDataset tar) or "parquet" (one Parquet file)."""
    files: tuple[SourceFile, ...]

    def identity(self, source: Location) -> dict[str, Any]:
        """Provenance of the shard's input: format and each file's key and URI with its size, etag and mtime."""
        return {"format": self.format, "files": [{"key": f.key, "uri": source.uri(f.key), "size": f.size,
                                                  "etag": f.etag, "mtime": f.mtime} for f in self.files]}


@dataclass(frozen=True)
class Inventory:
    """What planning found under an input."""

    shards: list[Shard]
    ignored: int = 0
    """Files under the input that are not of its kind (other extensions, hidden files): counted, never read."""


@dataclass(frozen=True)
class Record:
    """One input image as read from storage: its bytes, or why they could not be read."""

    image_id: str
    source_uri: str
    data: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class ParquetColumns:
    """Which columns of Parquet inputs hold the image bytes and (optionally) the image id."""

    image: str | None = None
    """None: the first of `IMAGE_COLUMNS` present."""
    id: str | None = None
    """None: `ID_COLUMN` when present, else `FILE#ROW`."""


@dataclass(frozen=True)
class Listing:
    """The files of one kind found under an input."""

    format: str
    """"images", "tar" or "parquet"."""
    files: list[SourceFile]
    """Sorted by key."""
    ignored: int = 0
    """Files under the input that are not of its kind (other extensions, hidden files): counted, never read."""


@dataclass(frozen=True)
class Change:
    """An input file that a finished shard covers, and that changed or vanished since that shard was written."""

    shard: str
    recorded: SourceFile
    """The file as the shard recorded it."""
    now: SourceFile | None
    """The file as listed now; None when it vanished."""


@dataclass(frozen=True)
class Coverage:
    """An input's files compared with those that finished shards cover (`compare`)."""

    new: list[SourceFile]
    """Files no finished shard covers, sorted by key: the next shards."""
    changed: list[Change]
    """Covered files whose size, etag or mtime differs from the recorded one."""
    vanished: list[Change]
    """Covered files that are no longer listed."""


def inventory(source: Location, input_format: str = "auto", shard_size: int = 1000,
              columns: ParquetColumns = ParquetColumns()) -> Inventory:
    """The shards of the dataset at `source`, in a stable order, and how many files were left out (`listing`,
    then `shards`).

    Raises:
        InputError: see `listing`; or `shard_size` is below 1.
    """
    found = listing(source, input_format, columns)
    return Inventory(shards(found.format, found.files, shard_size), found.ignored)


def listing(source: Location, input_format: str = "auto", columns: ParquetColumns = ParquetColumns()) -> Listing:
    """The input files of the dataset at `source`, sorted by key, and how many files were left out.

    Image folders are searched recursively. Hidden files and folders, and files of other kinds, are left out
    and counted.

    Raises:
        InputError: `source` does not exist or holds nothing usable, several kinds of input are mixed with
            `input_format="auto"`, or Parquet files lack the image column.
    """
    if input_format not in FORMATS:
        raise InputError(f"--input-format must be one of {', '.join(FORMATS)}, got {input_format!r}")
    found = source.files()
    if not found and not source.exists(""):
        raise InputError(f"{source.url} does not exist")
    by_format: dict[str, list[SourceFile]] = {}
    for key, info in sorted(found.items()):
        kind = _SUFFIX_FORMATS.get(posixpath.splitext(key)[1].lower())
        if kind and not any(part.startswith(".") for part in key.split("/")):
            etag = _etag(info)
            mtime = None if etag else info.get("mtime")
            by_format.setdefault(kind, []).append(SourceFile(key, info.get("size"), etag, mtime))
    if input_format == "auto":
        if len(by_format) > 1:
            raise InputError(f"{source.url} holds {' and '.join(sorted(by_format))} files; "
                             "choose one with --input-format")
        input_format = next(iter(by_format), "images")
    files = by_format.get(input_format, [])
    if not files:
        wanted = {"images": "image files (" + ", ".join(IMAGE_SUFFIXES) + ")", "tar": ".tar files",
                  "parquet": ".parquet files"}[input_format]
        raise InputError(f"no {wanted} under {source.url}")
    if input_format == "parquet":
        with source.fs.open(source.path(files[0].key), "rb") as first:
            image_column(source, files[0].key, pq.read_schema(first), columns)
    return Listing(input_format, files, len(found) - len(files))


def shards(input_format: str, files: list[SourceFile], shard_size: int, first: int = 0) -> list[Shard]:
    """`files` (sorted by key) as shards: every `.tar` or `.parquet` file a shard of its own, named by its key;
    image files in shards of `shard_size` named `part-NNNNN`, numbered from `first` (see `next_part`).

    Raises:
        InputError: `shard_size` is below 1.
    """
    if shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {shard_size}")
    if input_format != "images":
        return [Shard(posixpath.splitext(f.key)[0], input_format, (f,)) for f in files]
    width = max(5, len(str(first + len(files) // shard_size)))
    return [Shard(f"part-{first + index:0{width}d}", "images", tuple(files[start:start + shard_size]))
            for index, start in enumerate(range(0, len(files), shard_size))]


def next_part(names: Iterable[str]) -> int:
    """The first image-shard number after those of `names`: new shards never take a finished shard's name."""
    numbers = [int(found[1]) for name in names if (found := re.fullmatch(r"part-(\d+)", name))]
    return max(numbers, default=-1) + 1


def compare(recorded: dict[str, tuple[SourceFile, ...]], files: list[SourceFile]) -> Coverage:
    """Which of `files` (listed now) no finished shard covers, and which covered files changed or vanished.

    `recorded` maps each finished shard to the files it covers, as they were when it was written. A file
    counts as changed when its size, etag or (without etags: local disks) modification time differs from the
    recorded one, where both sides know it.
    """
    covered = {f.key: (shard, f) for shard, members in recorded.items() for f in members}
    new, changed = [], []
    for file in files:
        shard, was = covered.pop(file.key, (None, None))
        if was is None:
            new.append(file)
        elif _differs(was, file):
            changed.append(Change(shard, was, file))
    vanished = [Change(shard, was, None) for _, (shard, was) in sorted(covered.items())]
    return Coverage(new, changed, vanished)


def redo(recorded: dict[str, tuple[SourceFile, ...]], changed: list[Change], files: list[SourceFile],
         input_format: str) -> list[Shard]:
    """The finished shards holding `changed` files, to be written again whole under their own names (so their
    new mask file replaces the old one and no image appears twice): their recorded files still listed, as
    listed now. Files of theirs that vanished are left out."""
    listed = {f.key: f for f in files}
    names = sorted({change.shard for change in changed})
    return [Shard(name, input_format, tuple(listed[f.key] for f in recorded[name] if f.key in listed))
            for name in names]


def _differs(was: SourceFile, now: SourceFile) -> bool:
    return any(old is not None and new is not None and old != new
               for old, new in ((was.size, now.size), (was.etag, now.etag), (was.mtime, now.mtime)))


def read(shard: Shard, source: Location, columns: ParquetColumns = ParquetColumns()) -> Iterator[Record]:
    """The shard's images in a stable order.

    An image file that is gone or may not be read is a `Record` with `error` (retrying would not help). Any
    other failure of the storage (unreachable, timing out, failing) raises, so that the whole shard is retried
    and no image is recorded as bad because of it; so does an unreadable tar or Parquet file (`OSError`,
    `tarfile.TarError`, `pyarrow.ArrowException`, `InputError`).
    """
    if shard.format == "images":
        yield from _read_files(shard, source)
    elif shard.format == "tar":
        yield from _read_tar(shard.files[0].key, source)
    else:
        yield from _read_parquet(shard.files[0].key, source, columns)


def read_source(uri: str, storage_options: dict[str, Any], columns: ParquetColumns = ParquetColumns()) -> bytes:
    """The bytes of one image from the `source_uri` the job recorded for it: a file, `TAR#MEMBER` or
    `PARQUET#ROW` (read up to the member or row group that holds it). Raises `OSError`, `KeyError` (no such
    member or row) or `tarfile.TarError`."""
    base, _, member = uri.partition("#")
    if not member:
        with fsspec.open(uri, "rb", **storage_options) as file:
            return file.read()
    with fsspec.open(base, "rb", **storage_options) as stream:
        if base.endswith(".tar"):
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                for entry in archive:
                    if entry.name == member:
                        return archive.extractfile(entry).read()
            raise KeyError(f"no member {member} in {base}")
        parquet = pq.ParquetFile(stream)
        folder, name = posixpath.split(base)
        column = image_column(Location(folder or ".", storage_options), name, parquet.schema_arrow, columns)
        row, start = int(member), 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if row < start + rows:
                value = parquet.read_row_group(group, columns=[column]).column(0)[row - start].as_py()
                return value["bytes"] if isinstance(value, dict) else value
            start += rows
        raise KeyError(f"no row {row} in {base}")


def image_column(source: Location, key: str, schema: pa.Schema, columns: ParquetColumns) -> str:
    """The column of `schema` holding image bytes (binary, or a struct with a `bytes` field)."""
    names = [columns.image] if columns.image else [name for name in IMAGE_COLUMNS if name in schema.names]
    if not names or names[0] not in schema.names:
        wanted = f"column {columns.image!r}" if columns.image else "image column (" + ", ".join(IMAGE_COLUMNS) + ")"
        raise InputError(f"{source.uri(key)}: no {wanted}; it has {', '.join(schema.names)} "
                         "(name the image column with --image-column)")
    kind = schema.field(names[0]).type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)):
        raise InputError(f"{source.uri(key)}: column {names[0]!r} is {kind}, not image bytes "
                         "(binary, or a struct with a 'bytes' field)")
    return names[0]


def _etag(info: dict[str, Any]) -> str | None:
    etag = info.get("ETag") or info.get("etag")
    return str(etag).strip('"') if etag else None


def _read_files(shard: Shard, source: Location) -> Iterator[Record]:
    for file in shard.files:
        uri = source.uri(file.key)
        try:
            data = source.read(file.key)
        except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
            yield Record(file.key, uri, None, f"cannot read: {error}")
            continue
        yield Record(file.key, uri, data)


def _read_tar(key: str, source: Location) -> Iterator[Record]:
    uri = source.uri(key)
    with source.fs.open(source.path(key), "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if not member.isfile() or posixpath.splitext(member.name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            data = archive.extractfile(member).read()
            yield Record(f"{key}/{member.name}", f"{uri}#{member.name}", data)


def _read_parquet(key: str, source: Location, columns: ParquetColumns) -> Iterator[Record]:
    uri = source.uri(key)
    with source.fs.open(source.path(key), "rb") as stream:
        file = pq.ParquetFile(stream)
        image = image_column(source, key, file.schema_arrow, columns)
        id_column = columns.id or (ID_COLUMN if ID_COLUMN in file.schema_arrow.names else None)
        if id_column and id_column not in file.schema_arrow.names:
            raise InputError(f"{uri}: no id column {id_column!r}")
        wanted = [image] + ([id_column] if id_column and id_column != image else [])
        row = 0
        for batch in file.iter_batches(batch_size=64, columns=wanted):
            images = batch.column(image)
            if pa.types.is_struct(images.type):
                images = images.field("bytes")
            ids = batch.column(id_column).to_pylist() if id_column else [None] * len(batch)
            for data, image_id in zip(images.to_pylist(), ids):
                name = str(image_id) if image_id is not None else f"{key}#{row}"
                yield Record(name, f"{uri}#{row}", data, None if data else "no image bytes in this row")
                row += 1
