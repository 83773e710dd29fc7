"""Planning: shards of an input, and a grown input compared with what finished shards cover."""

import dataclasses
import json
import os
from pathlib import Path

import pytest

from diffseg import DiffSegConfig
from pipeline.labeling.driver import Plan, execute, plan
from pipeline.labeling.job import LabelJob
from pipeline.labeling.planning import Comparison, inventory, next_part, shards
from pipeline.store.dataset import OutputConflict, OutputDataset, Row
from pipeline.store.inputs import InputError, SourceFile
from pipeline.store.location import Location
from tests.pipeline.labeling.data import good_images, write_files


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


def label_without_ray(planned: Plan) -> None:
    """What a run writes for its planned shards (`driver._label`, then each actor's `LabelWorker.process`), with
    rows but no masks: a finished output for the next plan, made without Ray."""
    planned.output.claim({**planned.identity, "model": {"model": "tiny"}})
    planned.begin()
    for shard in planned.todo:
        rows = [Row(file.key, planned.source.uri(file.key)) for file in shard.files]
        planned.output.write(shard.name, rows, {"run_id": planned.run_id, "shard": shard.identity(planned.source)})
    planned.close()


def ignored_listed(output: Path, run_id: str) -> list[str]:
    lines = (output / "_runs" / f"{run_id}.ignored.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines]


def bookkeeping(output: Path) -> dict[str, bytes]:
    return {path.relative_to(output).as_posix(): path.read_bytes() for path in output.rglob("*") if path.is_file()}


def img2dataset_folder(folder: Path) -> list[str]:
    """img2dataset's layout (a caption .txt and a metadata .json beside every image, a stats file per subfolder),
    and a hidden file sorting before every image; returns the keys of the files that are no images, sorted."""
    others = {".DS_Store": b"", "00000_stats.json": b"{}", "00001_stats.json": b"{}"}
    for part, start in (("00000", 0), ("00001", 3)):
        for name, data in good_images(3, start=start).items():
            stem = f"{part}/{name.rsplit('.', 1)[0]}"
            others |= {f"{stem}.txt": b"a caption", f"{stem}.json": b"{}"}
            write_files(folder / part, {name: data})
    write_files(folder, others)
    return sorted(others)


def test_every_ignored_file_is_listed_in_the_run_s_file_and_a_rerun_with_nothing_to_do_lists_them_again(tmp_path):
    ignored = img2dataset_folder(tmp_path / "in")
    job = LabelJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model="tiny", shard_size=2)
    first = plan(job)
    assert not (tmp_path / "out").exists(), "planning writes nothing: the run may yet be refused"
    label_without_ray(first)
    assert ignored_listed(tmp_path / "out", first.run_id) == ignored, "every one, in key order"

    again = plan(job)
    assert not again.todo and again.run_id != first.run_id
    summary = execute(again, progress=False)
    assert (summary.shards_written, summary.shards_skipped, summary.files_new) == (0, 3, 0)
    assert summary.run_id == again.run_id
    assert (summary.files_ignored, summary.ignored_files) == (len(ignored), ignored[:5])
    assert summary.ignored_files_file == Location(str(tmp_path / "out")).uri(f"_runs/{again.run_id}.ignored.jsonl")
    assert ignored_listed(tmp_path / "out", again.run_id) == ignored, "complete when the summary comes"
    assert summary.to_dict()["ignored_files_file"] == summary.ignored_files_file


def test_an_output_made_with_other_settings_is_left_untouched(tmp_path):
    write_files(tmp_path / "in", {"a.txt": b"", **good_images(1), "z.json": b"{}"})
    job = LabelJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model="tiny")
    with plan(dataclasses.replace(job, output=str(tmp_path / "elsewhere"))) as other:
        OutputDataset(Location(str(tmp_path / "out"))).claim(other.identity)
    before = bookkeeping(tmp_path / "out")
    with pytest.raises(OutputConflict, match="different config"):
        plan(dataclasses.replace(job, config=DiffSegConfig(kl_threshold=0.5)))
    assert bookkeeping(tmp_path / "out") == before and list(before) == ["_diffseg.json"]


def test_a_plan_that_fails_writes_nothing_and_a_run_that_fails_after_going_ahead_leaves_its_file_complete(tmp_path):
    write_files(tmp_path / "in", {"a.txt": b"", **good_images(1), "k.json": b"{}", "z.tar": b""})
    job = LabelJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model="tiny")
    with pytest.raises(InputError, match="holds images and tar files"):
        plan(job)
    assert not (tmp_path / "out").exists()
    # One image a shard: planning reads the first shard only, the rest of the listing (and its error) comes later.
    with plan(dataclasses.replace(job, shard_size=1)) as planned:
        planned.begin()
        with pytest.raises(InputError, match="holds images and tar files"):
            list(planned.todo)
    assert ignored_listed(tmp_path / "out", planned.run_id) == ["a.txt", "k.json"]
