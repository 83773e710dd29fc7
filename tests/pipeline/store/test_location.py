import os
import pickle
import time

import pytest

from pipeline.store.location import Location, StorageError, parse_storage_options
from tests.cluster import free_port


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


ADVICE = "give a folder"


def test_a_folder_or_a_path_not_there_yet_can_be_a_folder(tmp_path):
    (tmp_path / "there").mkdir()
    Location(str(tmp_path / "there")).check_folder("--out", ADVICE)
    Location(str(tmp_path / "new" / "deeper")).check_folder("--out", ADVICE)


def test_a_file_cannot_be_a_folder_nor_hold_one(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError) as file:
        Location(str(tmp_path / "file")).check_folder("--out", ADVICE)
    with pytest.raises(StorageError) as under:
        Location(str(tmp_path / "file" / "sub")).check_folder("", ADVICE)
    assert str(file.value) == f"--out {tmp_path / 'file'} is a file; give a folder"
    assert str(under.value) == f"{tmp_path / 'file' / 'sub'} lies under a file, not a folder; give a folder"


def test_an_s3_object_is_a_file_and_a_prefix_a_folder(bucket):
    Location(f"s3://{bucket}/run").write("x", b"data")
    Location(f"s3://{bucket}/run").check_folder("--output", ADVICE)
    Location(f"s3://{bucket}/new").check_folder("--output", ADVICE)
    with pytest.raises(StorageError, match=rf"^--output s3://{bucket}/run/x is a file; give a folder$"):
        Location(f"s3://{bucket}/run/x").check_folder("--output", ADVICE)


def test_no_s3_credentials_are_one_line_saying_where_to_give_them(s3_endpoint, monkeypatch, tmp_path):
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    location = Location("s3://bucket/x", {"client_kwargs": {"endpoint_url": s3_endpoint}})
    with pytest.raises(StorageError) as error:
        location.check_folder("--input", ADVICE)
    assert str(error.value) == ("--input s3://bucket/x: no credentials found (Unable to locate credentials); set "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give key and secret "
                                "in --storage-options")


def test_an_s3_endpoint_that_does_not_answer_is_told_in_seconds():
    endpoint = f"http://127.0.0.1:{free_port()}"
    location = Location("s3://bucket/x", {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": endpoint}})
    started = time.monotonic()
    with pytest.raises(StorageError) as error:
        location.check_folder("--output", ADVICE)
    assert time.monotonic() - started < 15
    assert str(error.value) == (f'--output s3://bucket/x: the store does not answer (Could not connect to the endpoint '
                                f'URL: "{endpoint}/bucket/x"); check its endpoint URL (AWS_ENDPOINT_URL, or '
                                "client_kwargs.endpoint_url in --storage-options) and the network")
