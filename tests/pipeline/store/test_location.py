import pickle

import pytest

from pipeline.store.location import Location, StorageError, parse_storage_options


def test_local_writes_are_atomic_and_leave_nothing_behind(tmp_path):
    location = Location(str(tmp_path / "out"))
    location.write("a/b.bin", b"first")
    location.write("a/b.bin", b"second")
    assert location.read("a/b.bin") == b"second"
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["b.bin"]
    assert location.uri("a/b.bin") == f"file://{tmp_path}/out/a/b.bin"


def test_listing_is_relative_and_recursive(tmp_path):
    location = Location(f"file://{tmp_path}")
    location.write("x/y/z.txt", b"123")
    location.write("top.txt", b"")
    files = location.files()
    assert sorted(files) == ["top.txt", "x/y/z.txt"] and files["x/y/z.txt"]["size"] == 3
    assert location.files("x") == {"x/y/z.txt": files["x/y/z.txt"]}
    assert location.files("nothing-here") == {}


def test_s3_locations_work_through_the_aws_variables(bucket):
    location = Location(f"s3://{bucket}/prefix")
    location.write("d/file.bin", b"data")
    files = location.files()
    assert list(files) == ["d/file.bin"] and files["d/file.bin"]["ETag"]
    assert location.uri("d/file.bin") == f"s3://{bucket}/prefix/d/file.bin"
    assert pickle.loads(pickle.dumps(location)).read("d/file.bin") == b"data"


def test_storage_options_are_kept_out_of_repr(bucket):
    location = Location(f"s3://{bucket}", {"key": "testing", "secret": "hunter2"})
    assert location.files() == {}
    assert "hunter2" not in repr(location)


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object")])
def test_bad_storage_options_are_refused(text, message):
    with pytest.raises(StorageError, match=message):
        parse_storage_options(text)
    assert parse_storage_options('{"anon": true}') == {"anon": True}
