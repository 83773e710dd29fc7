"""Planning: shards of an input, and a grown input compared with what finished shards cover."""

import os

import pytest

from pipeline.labeling.planning import Comparison, inventory, next_part, shards
from pipeline.store.inputs import InputError, SourceFile
from pipeline.store.location import Location
from tests.pipeline.labeling.data import write_files


def files(*specs: tuple[str, int]) -> list[SourceFile]:
    return [SourceFile(key, size, None) for key, size in specs]


def covered(recorded: dict[str, tuple[SourceFile, ...]]) -> list[list[tuple[str, str, SourceFile]]]:
    """`recorded` (shard: files) as `OutputDataset.covered` gives it: one key-ordered sequence per shard."""
    return [[(f.key, shard, f) for f in members] for shard, members in recorded.items()]


def test_files_no_finished_shard_covers_make_new_shards_numbered_after_the_finished_ones():
    recorded = {"part-00000": tuple(files(("b.png", 1), ("d.png", 1))), "part-00001": tuple(files(("f.png", 1)))}
    now = files(("a.png", 1), ("b.png", 1), ("c.png", 1), ("d.png", 1), ("e.png", 1), ("f.png", 1), ("g.png", 1))
    coverage = Comparison(covered(recorded), now)
    new = list(coverage)
    assert [f.key for f in new] == ["a.png", "c.png", "e.png", "g.png"]
    assert (coverage.changed, coverage.vanished) == ([], [])
    made = shards("images", new, 3, first=next_part(recorded))
    assert [(s.name, [f.key for f in s.files]) for s in made] == [("part-00002", ["a.png", "c.png", "e.png"]),
                                                                  ("part-00003", ["g.png"])]
    assert next_part(["part-00009", "part-00010", "shards/000"]) == 11 and next_part([]) == 0


def test_covered_files_whose_size_or_etag_differs_are_changed_and_unlisted_ones_vanished():
    recorded = {"part-0": (SourceFile("a.png", 5, "e1"), SourceFile("b.png", 5, None), SourceFile("c.png", 5, None)),
                "part-1": (SourceFile("d.png", 5, "e4"),)}
    now = [SourceFile("a.png", 5, "e2"), SourceFile("b.png", 6, None), SourceFile("d.png", 5, "e4")]
    coverage = Comparison(covered(recorded), now)
    assert list(coverage) == []
    assert [(c.shard, c.recorded.key, c.now) for c in coverage.changed] == [("part-0", "a.png", now[0]),
                                                                           ("part-0", "b.png", now[1])]
    assert [(c.shard, c.recorded.key, c.now) for c in coverage.vanished] == [("part-0", "c.png", None)]


def test_a_shard_holding_a_changed_file_is_redone_whole_under_its_name_without_its_vanished_files():
    recorded = {"part-0": tuple(files(("a.png", 1), ("b.png", 1), ("c.png", 1))), "part-1": tuple(files(("d.png", 1)))}
    now = files(("a.png", 2), ("b.png", 1), ("d.png", 1))
    coverage = Comparison(covered(recorded), now)
    assert list(coverage) == [] and coverage.redone_names == ["part-0"]
    [shard] = coverage.redo("images", [("part-0", recorded["part-0"])])
    assert (shard.name, shard.files) == ("part-0", (now[0], now[1]))


def test_local_files_carry_their_modification_time_so_a_same_size_rewrite_is_a_change(tmp_path):
    write_files(tmp_path, {"a.png": b"one"})
    os.utime(tmp_path / "a.png", ns=(0, 10**9))  # long ago: coarse file-system clocks cannot hide the rewrite
    [before] = inventory(Location(str(tmp_path))).shards[0].files
    (tmp_path / "a.png").write_bytes(b"two")
    [after] = inventory(Location(str(tmp_path))).shards[0].files
    assert before.size == after.size and before.mtime != after.mtime
    coverage = Comparison(covered({"part-00000": (before,)}), [after])
    assert list(coverage) == [] and [change.now for change in coverage.changed] == [after]


def test_a_comparison_yields_new_files_as_they_come_and_knows_the_vanished_ones_at_the_end():
    recorded = {"part-0": tuple(files(("b.png", 1), ("c.png", 1)))}
    comparison = Comparison(covered(recorded), iter(files(("a.png", 1), ("b.png", 2))))
    stream = iter(comparison)
    assert next(stream).key == "a.png" and comparison.vanished == []
    assert list(stream) == [] and comparison.new == 1
    assert [c.recorded.key for c in comparison.changed] == ["b.png"]
    assert [c.recorded.key for c in comparison.vanished] == ["c.png"]


def test_a_comparison_merges_the_sequences_of_several_runs_as_the_listing_goes_on():
    first = [(f.key, "part-00000", f) for f in files(("a.png", 1), ("c.png", 1), ("e.png", 1))]
    second = [(f.key, "part-00001", f) for f in files(("b.png", 1), ("d.png", 1))]
    read: list[str] = []

    def lazily(sequence):
        for item in sequence:
            read.append(item[0])
            yield item

    comparison = Comparison([lazily(first), lazily(second)], iter(files(("a.png", 1), ("a0.png", 1),
                                                                         ("c.png", 1), ("f.png", 1))))
    stream = iter(comparison)
    assert next(stream).key == "a0.png" and read == ["a.png", "b.png", "c.png"], "each sequence read only as needed"
    assert [f.key for f in stream] == ["f.png"]
    assert [(c.shard, c.recorded.key) for c in comparison.vanished] == [("part-00001", "b.png"),
                                                                       ("part-00001", "d.png"), ("part-00000", "e.png")]


def test_a_listing_out_of_key_order_is_refused_rather_than_compared_wrongly():
    comparison = Comparison([], iter(files(("b.png", 1), ("a.png", 1))))
    with pytest.raises(InputError, match="lists 'a.png' after 'b.png'"):
        list(comparison)
