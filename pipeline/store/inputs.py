"""Input datasets as the store reads them: folders of image files, WebDataset `.tar` shards, or Parquet files of
image bytes. Listed lazily in key order (`listing`), a shard's images read (`read`), one image read back from the
URI a job recorded for it (`read_source`).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
import fsspec.asyn
import pyarrow as pa
import pyarrow.parquet as pq

from diffseg.defaults import IMAGE_SUFFIXES

from .location import Location, StorageError

FORMATS = ("auto", "images", "tar", "parquet")
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")
"""Columns tried, in order, for the image bytes of Parquet inputs when no column is named."""
ID_COLUMN = "key"
"""Column used for image ids of Parquet inputs when present and no column is named (img2dataset's)."""
PAGE = 1000
"""Keys an object store lists per request (S3's most): what a flat listing takes at once."""
IGNORED_NAMED = 5
"""Ignored files a listing keeps the keys of (`Listing.ignored_keys`); every one goes to its sink (`Listing.attach`)."""
HELD_IN_MEMORY = 1 << 20
"""Bytes of ignored keys a listing holds in memory until a sink is attached (`Listing.attach`); more go on to a
temporary file, so that an input with no file of its kind before a long run of others holds no more than this."""

_SUFFIX_FORMATS = {**{suffix: "images" for suffix in IMAGE_SUFFIXES}, ".tar": "tar", ".parquet": "parquet"}


class InputError(ValueError):
    """The input cannot be planned; the message names it and says why in one line."""


class SourceFile(NamedTuple):
    """One input file, with what identifies its content version. A named tuple: planning makes one per listed file
    and per covered one, and a tuple is made in half a dataclass's time."""

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


class Listing:
    """The input files of one kind under an input, read as the store lists them: iterating (once) yields them
    sorted by key, one folder listing at a time, so the first shards can start while the rest is listed.

    `format` is resolved from the first file of a known kind (`listing` reads up to it); `ignored` and
    `ignored_keys` are final only once the iteration ended. Every ignored file's key goes to the sink given to
    `attach`, in key order, as it is listed (those listed before it was attached are held until then), so that
    all of them can be written out without ever holding them all.

    Raises (while iterating):
        InputError: with `input_format="auto"`, a file of another kind than the first ones.
    """

    def __init__(self, source: Location, input_format: str) -> None:
        self.source = source
        self.format = input_format
        self.ignored = 0
        """Files under the input that are not of its kind (other extensions, hidden files): counted, never read."""
        self.ignored_keys: list[str] = []
        """The first `IGNORED_NAMED` of them, in key order; never all (an img2dataset folder has a .txt and a .json
        beside every image: twice as many keys as images): those go to the sink (`attach`)."""
        self._auto = input_format == "auto"
        self._files = self._select()
        self._head: list[SourceFile] = []
        self._sink: Callable[[str], None] | None = None
        self._held: tempfile.SpooledTemporaryFile[bytes] | None = None
        """The keys ignored before a sink was attached, one JSON string a line (at most `HELD_IN_MEMORY` bytes of
        them in memory)."""

    def attach(self, sink: Callable[[str], None]) -> None:
        """Give the key of every ignored file to `sink`, in key order: at once those ignored so far (held since
        they were listed), then each as it is listed. `sink` raising stops the listing with its error."""
        held, self._held = self._held, None
        if held is not None:
            with held:
                held.seek(0)
                for line in held:
                    sink(json.loads(line))
        self._sink = sink

    def first(self) -> SourceFile:
        """The first file of the input's kind, read ahead (it is still the first one iterating yields).

        Raises:
            InputError: `source` does not exist or holds no file of the kind (see `listing`).
        """
        if not self._head:
            self._head.append(next(self._files))
        return self._head[0]

    def __iter__(self) -> Iterator[SourceFile]:
        yield from self._head
        self._head.clear()
        yield from self._files

    def _select(self) -> Iterator[SourceFile]:
        listed = kept = 0
        for key, info in walk(self.source):
            listed += 1
            # The suffix from the last dot on (not `splitext`, twice as slow): a dot in a folder name or a hidden
            # file's leading one gives no known suffix or is caught as hidden below, as with `splitext`.
            kind = _SUFFIX_FORMATS.get(key[key.rfind("."):].lower()) if "." in key else None
            if kind and "/." in f"/{key}":  # hidden file or folder
                kind = None
            if kind and self.format == "auto":
                self.format = kind
            if kind != self.format:
                if kind and self._auto:
                    raise InputError(f"{self.source.url} holds {' and '.join(sorted((self.format, kind)))} files; "
                                     "choose one with --input-format")
                self._ignore(key)
                continue
            kept += 1
            etag = _etag(info)
            yield SourceFile(key, info.get("size"), etag, None if etag else info.get("mtime"))
        if not kept:
            if not listed and not self.source.exists(""):
                raise InputError(f"{self.source.url} does not exist")
            wanted = {"images": "image files (" + ", ".join(IMAGE_SUFFIXES) + ")", "tar": ".tar files",
                      "parquet": ".parquet files"}[self.format if self.format != "auto" else "images"]
            raise InputError(f"no {wanted} under {self.source.url}")

    def _ignore(self, key: str) -> None:
        self.ignored += 1
        if len(self.ignored_keys) < IGNORED_NAMED:
            self.ignored_keys.append(key)
        if self._sink is not None:
            self._sink(key)
            return
        if self._held is None:
            self._held = tempfile.SpooledTemporaryFile(HELD_IN_MEMORY)
        # JSON, one a line: a key is a value from the input, and may hold any character (a newline too).
        self._held.write(json.dumps(key).encode() + b"\n")


def listing(source: Location, input_format: str = "auto", columns: ParquetColumns = ParquetColumns()) -> Listing:
    """The input files of the dataset at `source`, listed lazily (see `Listing`), read up to the first one.

    Image folders are searched recursively. Hidden files and folders, and files of other kinds, are left out
    and counted.

    Raises:
        InputError: `source` does not exist or holds nothing usable, several kinds of input are mixed with
            `input_format="auto"` (also while iterating), or Parquet files lack the image column.
    """
    if input_format not in FORMATS:
        raise InputError(f"--input-format must be one of {', '.join(FORMATS)}, got {input_format!r}")
    found = Listing(source, input_format)
    first = found.first()
    if found.format == "parquet":
        with source.fs.open(source.path(first.key), "rb") as stream:
            image_column(source, first.key, pq.read_schema(stream), columns)
    return found


def walk(source: Location) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every file under `source` with fsspec's details (`size`, `ETag` on object stores), keyed by its path
    relative to `source` and sorted by it, as `Location.files` would give them; but listed one folder at a time
    (one `ls` each), so that only one folder's entries are held at once and the first come before the last
    folder is listed. On S3, one flat listing of every key under the prefix instead, `PAGE` keys per request, in
    key order as the store gives them."""
    if "s3" in source.fs.protocol and hasattr(source.fs, "_iterdir"):
        yield from _walk_pages(source.fs, source.root)
    else:
        yield from _walk(source.fs, source.root, len(source.root) + 1)


def _walk_pages(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """s3fs's paginated listing (`_iterdir`, which `ls` and `find` read to the end before they answer), taken a
    page at a time from its event loop."""
    from botocore.exceptions import BotoCoreError, ClientError  # s3fs's own dependency
    from s3fs.errors import translate_boto_error

    bucket, prefix, _ = fs.split_path(root)
    pages = fs._iterdir(bucket, delimiter="", prefix=f"{prefix}/" if prefix else "")
    start = len(root) + 1
    while True:
        try:
            batch = fsspec.asyn.sync(fs.loop, _take, pages, PAGE)
        except (ClientError, BotoCoreError, OSError) as error:
            error = translate_boto_error(error) if isinstance(error, ClientError) else error
            if isinstance(error, FileNotFoundError):
                return
            raise StorageError(f"{fs.unstrip_protocol(root)}: cannot list ({error})") from None
        if not batch:
            return
        # Keys ending in "/" are the empty objects some tools make to show folders.
        yield from ((info["name"][start:], info) for info in batch if not info["name"].endswith("/"))


async def _take(items: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The next `count` items of `items` (fewer at its end); `items` goes on from there the next time."""
    taken = []
    async for item in items:
        taken.append(item)
        if len(taken) == count:
            break
    return taken


def _walk(fs: fsspec.AbstractFileSystem, folder: str, start: int) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        # Never a cached listing (the actors write outputs too), and none kept: a store's listing cache (s3fs's
        # `dircache`) would hold the whole input.
        entries = fs.ls(folder, detail=True, refresh=True)
        fs.invalidate_cache(folder)
    except FileNotFoundError:
        return
    except OSError as error:
        raise StorageError(f"{fs.unstrip_protocol(folder)}: cannot list ({error})") from None
    inside = folder.rstrip("/") + "/"
    # A subfolder sorts as its name and "/": every key under "a/" falls between "a.png" and "a0.png", as a
    # sorted flat listing of keys orders them.
    entries = sorted(((entry["name"].rstrip("/") + ("/" if entry.get("type") == "directory" else ""), entry)
                      for entry in entries if entry["name"].startswith(inside) and len(entry["name"]) > len(inside)),
                     key=lambda named: named[0])
    for name, entry in entries:
        if entry.get("type") == "directory":
            yield from _walk(fs, name.rstrip("/"), start)
        elif entry.get("type", "file") == "file":
            yield name[start:], entry


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
