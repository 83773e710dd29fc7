"""Local file names for untrusted ids, written to a real folder."""

import os
from pathlib import Path

import pytest

from diffseg.filenames import COMPONENT_BYTES, PATH_BYTES, FileNames, safe_path

SUFFIXES = (".mask.png", ".overlay.png")

HOSTILE = [
    "../../../x.png", "/etc/passwd", "a\\..\\..\\b", "C:\\Windows\\x.png", "a\x00b", "\n", "\x1b[31mred\r", "..",
    ".", "", "/", "//", "a/./b/", "a/../../b", "../" * 2000, "a/" * 600 + "b", "x" * 300, "y" * 5000,
    "é" * 2500, "日本語の写真" * 900, "\udcff\udcfe.png", "%", "~", "%2E%2E", "<script>'\"&",
    "\u202egnp.exe", "a:b*c?d|e",
]
"""Ids that naive joining would turn into paths outside the folder, invalid paths or over-long names."""


def inside(folder: Path, path: Path) -> bool:
    return os.path.commonpath([folder.resolve(), path.resolve()]) == str(folder.resolve())


def write(names: FileNames, image_id: str) -> Path:
    """Claim `image_id` and write its files, as the exporters do; returns the stem."""
    stem = names.claim(image_id)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        Path(f"{stem}{suffix}").write_text(image_id, encoding="utf-8", errors="surrogatepass")
    return stem


@pytest.mark.parametrize("image_id, path", [
    ("img-000.jpg", "img-000.jpg"),
    ("sub/cat", "sub/cat"),
    ("shard.tar/../../../x.png", "shard.tar/%2E%2E/%2E%2E/%2E%2E/x.png"),
    ("/etc/passwd", "%/etc/passwd"),
    ("a\\..\\..\\b", "a%5C..%5C..%5Cb"),
    ("data.parquet#12", "data.parquet%2312"),
    ("café <1>.jpg", "café %3C1%3E.jpg"),
    ("a\x00b\n", "a%00b%0A"),
    ("", "%"),
    (".", "%2E"),
    ("a//b/", "a/%/b/%"),
    ("100%~", "100%25%7E"),
])
def test_ids_map_to_readable_relative_paths(image_id, path):
    assert safe_path(image_id) == path


def test_hostile_ids_stay_inside_the_folder_and_every_file_is_written(tmp_path):
    folder = tmp_path / "deep" / "er" / "out"
    names = FileNames(folder, SUFFIXES)
    stems = [write(names, image_id) for image_id in HOSTILE]
    assert all(inside(folder, stem) and inside(folder, Path(f"{stem}.overlay.png")) for stem in stems)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 2 * len(HOSTILE) and all(inside(folder, p) for p in written)
    assert names.renamed == 0
    for stem in stems:
        relative = stem.relative_to(folder).as_posix()
        assert len(relative.encode()) <= PATH_BYTES
        assert all(0 < len(part.encode()) <= COMPONENT_BYTES and part not in (".", "..")
                   for part in relative.split("/"))


def test_the_mapping_is_deterministic(tmp_path):
    assert [safe_path(i) for i in HOSTILE] == [safe_path(i) for i in HOSTILE]
    ids = HOSTILE + ["dup", "dup", "Dup", "a.mask.png/x", "a"]
    first, second = FileNames(tmp_path, SUFFIXES), FileNames(tmp_path, SUFFIXES)
    assert [first.claim(i) for i in ids] == [second.claim(i) for i in ids]


def test_ids_that_naive_sanitizing_would_merge_stay_apart():
    ids = ["a/b", "a%2Fb", "a\\b", "a_b", "a b", "a:b", "a%5Cb", "a%255Cb", "..", "%2E%2E", ".", "%2E", "", "%",
           "/", "//", "/a", "%/a", "a/", "a~2", "a\x00", "a\x01", "a#0", "a%230", "x" * 300, "x" * 299 + "y",
           "x" * 5000, "x" * 5000 + "/", "é", "e\u0301", "../" * 2000, "../" * 2001]
    assert len({safe_path(i) for i in ids}) == len(ids)


def test_long_names_are_cut_and_told_apart_by_a_digest():
    shared = "写" * 100  # 300 bytes of UTF-8
    a, b = safe_path(shared + "a.jpg"), safe_path(shared + "b.jpg")
    assert a != b and a.startswith("写" * 60) and b.startswith("写" * 60)
    assert len(a.encode()) <= COMPONENT_BYTES and len(b.encode()) <= COMPONENT_BYTES


def test_duplicate_ids_get_numbered_names_and_are_counted(tmp_path):
    names = FileNames(tmp_path, SUFFIXES)
    stems = [write(names, image_id) for image_id in ["img.png", "img.png", "other.png", "img.png"]]
    assert [s.relative_to(tmp_path).as_posix() for s in stems] == ["img.png", "img.png~2", "other.png", "img.png~3"]
    assert names.renamed == 2
    assert len(list(tmp_path.iterdir())) == 8


def test_ids_differing_only_in_case_or_normalization_get_distinct_files(tmp_path):
    names = FileNames(tmp_path, SUFFIXES)
    stems = [names.claim(i) for i in ["Cat.png", "cat.png", "sub/x", "SUB/x", "\u00c5", "\u212b"]]
    assert [s.relative_to(tmp_path).as_posix() for s in stems] == [
        "Cat.png", "cat.png~2", "sub/x", "SUB/x~2", "\u00c5", "\u212b~2"]
    assert names.renamed == 3


@pytest.mark.parametrize("ids, expected", [
    (["a.mask.png/x", "a"], ["a.mask.png/x", "a~2"]),  # a's mask file would be the folder of the first id
    (["a", "a.mask.png/x", "a.mask.png/y"], ["a", "a.mask.png~2/x", "a.mask.png~2/y"]),
    (["b.overlay.png/c/d", "b"], ["b.overlay.png/c/d", "b~2"]),
    (["a", "a/b", "a/b/c"], ["a", "a/b", "a/b/c"]),  # a's files sit next to the folder a: no conflict
])
def test_a_file_never_takes_the_place_of_a_folder(tmp_path, ids, expected):
    names = FileNames(tmp_path, SUFFIXES)
    stems = [write(names, image_id) for image_id in ids]
    assert [s.relative_to(tmp_path).as_posix() for s in stems] == expected
    assert names.renamed == sum(e != i for e, i in zip(expected, ids))
    assert sum(p.is_file() for p in tmp_path.rglob("*")) == 2 * len(ids)
