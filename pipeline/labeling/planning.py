"""Planning a labeling run: an input's files as shards, and what changed since earlier runs.

A shard is the unit of work and of output: one input shard gives one mask Parquet file. Planning is
deterministic: the same input always gives the same shards, with the same names. An input that grows is compared
with what earlier runs recorded (`Comparison`): only its new files make new shards, so no file is labeled twice.
"""

from __future__ import annotations

import heapq
import itertools
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..store.inputs import InputError, ParquetColumns, Shard, SourceFile, listing
from ..store.location import Location


@dataclass(frozen=True)
class Inventory:
    """What planning found under an input."""

    shards: list[Shard]
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


def inventory(source: Location, input_format: str = "auto", shard_size: int = 1000,
              columns: ParquetColumns = ParquetColumns()) -> Inventory:
    """The shards of the dataset at `source`, in a stable order, and how many files were left out (`listing`,
    then `shards`, read to the end).

    Raises:
        InputError: see `listing`; or `shard_size` is below 1.
    """
    found = listing(source, input_format, columns)
    found.attach(lambda key: None)  # counted only: nothing held
    made = list(shards(found.format, found, shard_size))
    return Inventory(made, found.ignored)


def shards(input_format: str, files: Iterable[SourceFile], shard_size: int, first: int = 0) -> Iterator[Shard]:
    """`files` (sorted by key) as shards, each made as soon as its files are read: every `.tar` or `.parquet`
    file a shard of its own, named by its key; image files in shards of `shard_size` named `part-NNNNN`,
    numbered from `first` (see `next_part`).

    Raises:
        InputError: `shard_size` is below 1 (at once).
    """
    if shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {shard_size}")
    return _shards(input_format, iter(files), shard_size, first)


def _shards(input_format: str, files: Iterator[SourceFile], shard_size: int, first: int) -> Iterator[Shard]:
    if input_format != "images":
        yield from (Shard(posixpath.splitext(f.key)[0], input_format, (f,)) for f in files)
        return
    for number in itertools.count(first):
        members = tuple(itertools.islice(files, shard_size))
        if not members:
            return
        yield Shard(f"part-{number:05d}", "images", members)


def next_part(names: Iterable[str]) -> int:
    """The first image-shard number after those of `names`: new shards never take a finished shard's name."""
    numbers = [int(found[1]) for name in names if (found := re.fullmatch(r"part-(\d+)", name))]
    return max(numbers, default=-1) + 1


class Comparison:
    """Files listed now, compared as they come with those that finished shards cover: iterating (once) yields
    the files no finished shard covers; `changed` and `vanished` are final once the iteration ended.

    `covered` are sequences of `(key, shard, file)` in key order, the files as their shard recorded them
    (`OutputDataset.covered`): merged as the listing (in key order too) goes on, so what is held is the head of
    each sequence, never the listing's files nor every covered one. A file counts as changed when its size, etag
    or (without etags: local disks) modification time differs from the recorded one, where both sides know it.

    Raises (while iterating):
        InputError: the listing is not in key order (a store that does not list keys sorted).
    """

    def __init__(self, covered: Iterable[Iterable[tuple[str, str, SourceFile]]], files: Iterable[SourceFile]) -> None:
        self._covered = covered
        self._files = files
        self.new = 0
        """Files yielded so far."""
        self.changed: list[Change] = []
        """Covered files whose size, etag or mtime differs from the recorded one."""
        self.vanished: list[Change] = []
        """Covered files that are no longer listed."""

    def __iter__(self) -> Iterator[SourceFile]:
        sequences = [iter(sequence) for sequence in self._covered]
        covered = sequences[0] if len(sequences) == 1 else heapq.merge(*sequences)
        pending = next(covered, None)
        last = ""
        for file in self._files:
            key = file.key
            if key <= last:
                raise InputError(f"the input lists {key!r} after {last!r}: planning needs its keys listed in order")
            last = key
            while pending is not None and pending[0] < key:
                self.vanished.append(Change(pending[1], pending[2], None))
                pending = next(covered, None)
            if pending is not None and pending[0] == key:
                if _differs(pending[2], file):
                    self.changed.append(Change(pending[1], pending[2], file))
                pending = next(covered, None)
            else:
                self.new += 1
                yield file
        while pending is not None:
            self.vanished.append(Change(pending[1], pending[2], None))
            pending = next(covered, None)

    def redo(self, input_format: str, recorded: Iterable[tuple[str, tuple[SourceFile, ...]]]) -> list[Shard]:
        """The finished shards holding changed files, once the iteration ended, to be written again whole under
        their own names (so their new mask file replaces the old one and no image appears twice). `recorded`
        gives the files of those shards (`OutputDataset.markers` of `redone_names`); each shard keeps its files
        still listed, the changed ones as listed now, and leaves out those that vanished."""
        now = {change.recorded.key: change.now for change in self.changed}
        gone = {change.recorded.key for change in self.vanished}
        return [Shard(name, input_format, tuple(now.get(f.key, f) for f in files if f.key not in gone))
                for name, files in recorded]

    @property
    def redone_names(self) -> list[str]:
        """The finished shards that hold changed files (once the iteration ended), sorted."""
        return sorted({change.shard for change in self.changed})


def _differs(was: SourceFile, now: SourceFile) -> bool:
    # Spelled out rather than a loop over the three pairs: a re-run calls this for every covered file.
    return ((was.size != now.size and was.size is not None and now.size is not None)
            or (was.etag != now.etag and was.etag is not None and now.etag is not None)
            or (was.mtime != now.mtime and was.mtime is not None and now.mtime is not None))
