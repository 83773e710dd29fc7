"""Input datasets: listing in key order, reading shards, reading one image back."""


import pytest

from pipeline.labeling.planning import inventory, shards
from pipeline.store import inputs
from pipeline.store.inputs import InputError, ParquetColumns, listing, read, read_source, walk
from pipeline.store.location import Location
from tests.pipeline.labeling.data import good_images, parquet_bytes, tar_bytes, write_files


def test_image_folders_are_split_by_sorted_key_into_stable_shards(tmp_path):
    files = good_images(7)
    write_files(tmp_path / "nested", dict(list(files.items())[:3]))
    write_files(tmp_path, dict(list(files.items())[3:]))
    write_files(tmp_path, {".hidden/x.png": b"", "notes.txt": b"", "._img.png": b""})
    found = inventory(Location(str(tmp_path)), shard_size=3)
    shards = found.shards
    assert [s.name for s in shards] == ["part-00000", "part-00001", "part-00002"]
    keys = [f.key for s in shards for f in s.files]
    assert keys == sorted(keys) and len(keys) == 7 and "nested/img-000.png" in keys
    assert inventory(Location(str(tmp_path)), shard_size=3) == found
    assert shards[0].files[0].size == len(files[keys[0].split("/")[-1]])
    assert found.ignored == 3, "the hidden files and notes.txt are left out, and counted"


def test_gif_files_are_images_like_in_the_cli(tmp_path):
    write_files(tmp_path, {"a.gif": b"GIF89a", "b.png": b"x", "c.txt": b"y"})
    found = inventory(Location(str(tmp_path)))
    assert [f.key for f in found.shards[0].files] == ["a.gif", "b.png"] and found.ignored == 1


def test_a_listing_counts_every_ignored_file_and_keeps_only_the_first_keys(tmp_path):
    """img2dataset's layout: a caption .txt and a metadata .json beside every image."""
    images = good_images(4)
    write_files(tmp_path, {**images, **{name.rsplit(".", 1)[0] + suffix: b"{}" for name in images
                                        for suffix in (".txt", ".json")}})
    found = listing(Location(str(tmp_path)))
    assert [file.key for file in found] == sorted(images)
    assert found.ignored == 8 and inputs.IGNORED_NAMED == 5
    assert found.ignored_keys == ["img-000.json", "img-000.txt", "img-001.json", "img-001.txt", "img-002.json"]


def test_ignored_keys_go_to_the_attached_sink_in_key_order_the_early_ones_held_until_it_is_attached(tmp_path):
    write_files(tmp_path, {".hidden.png": b"", "a.txt": b"", "b.json": b"", "c.png": b"x", "d.txt": b"",
                           "sub/e.json": b"", "sub/f.jpg": b"x", "z.txt": b""})
    found = listing(Location(str(tmp_path)))
    assert found.first().key == "c.png" and found.ignored == 3, "listed up to the first image"
    sunk: list[str] = []
    found.attach(sunk.append)
    assert sunk == [".hidden.png", "a.txt", "b.json"], "held until attached, then given at once"
    files = iter(found)
    assert next(files).key == "c.png" and sunk == [".hidden.png", "a.txt", "b.json"]
    assert next(files).key == "sub/f.jpg"
    assert sunk == [".hidden.png", "a.txt", "b.json", "d.txt", "sub/e.json"], "each given as it is listed"
    assert next(files, None) is None
    assert sunk == [".hidden.png", "a.txt", "b.json", "d.txt", "sub/e.json", "z.txt"] and found.ignored == 6
    assert found.ignored_keys == sunk[:inputs.IGNORED_NAMED]


def test_many_keys_ignored_before_the_sink_is_attached_are_held_out_of_memory_and_given_back_exactly(
        tmp_path, monkeypatch):
    """Keys are values from the input: odd characters (a newline, quotes) come back as they were listed."""
    monkeypatch.setattr(inputs, "HELD_IN_MEMORY", 64)
    odd = ['a "quoted"\nkey.txt', "b\\back.json", "c-\u00e9t\u00e9.txt"]
    sidecars = [f"d-{i:03d}.txt" for i in range(40)]
    write_files(tmp_path, {**{name: b"" for name in odd + sidecars}, "e.png": b"x"})
    found = listing(Location(str(tmp_path)))  # holds 40 times HELD_IN_MEMORY: on disk
    sunk: list[str] = []
    found.attach(sunk.append)
    assert sunk == sorted(odd + sidecars)
    assert [file.key for file in found] == ["e.png"] and sunk == sorted(odd + sidecars)


def test_records_of_an_image_shard_carry_ids_uris_and_bytes(tmp_path):
    files = good_images(2)
    write_files(tmp_path, files)
    source = Location(str(tmp_path))
    records = list(read(inventory(source).shards[0], source))
    assert [r.image_id for r in records] == sorted(files)
    assert records[0].source_uri == f"file://{tmp_path}/{records[0].image_id}"
    assert records[0].data == files[records[0].image_id] and records[0].error is None


def test_each_tar_is_a_shard_of_its_image_members(tmp_path):
    files = good_images(3)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "00001.tar").write_bytes(tar_bytes(files))
    source = Location(str(tmp_path))
    [shard] = inventory(source).shards
    assert (shard.name, shard.format) == ("train/00001", "tar")
    records = list(read(shard, source))
    assert [r.image_id for r in records] == [f"train/00001.tar/{name}" for name in files]
    assert records[1].source_uri.endswith("train/00001.tar#" + list(files)[1])
    assert [r.data for r in records] == list(files.values())


@pytest.mark.parametrize("style, ids", [("datasets", lambda names: [f"a.parquet#{i}" for i in range(len(names))]),
                                        ("img2dataset", lambda names: list(names))])
def test_parquet_files_are_shards_of_their_rows(tmp_path, style, ids):
    files = good_images(5)
    (tmp_path / "a.parquet").write_bytes(parquet_bytes(files, style))
    source = Location(str(tmp_path))
    [shard] = inventory(source).shards
    records = list(read(shard, source))
    assert [r.image_id for r in records] == ids(files)
    assert [r.data for r in records] == list(files.values())


def test_parquet_image_and_id_columns_can_be_named(tmp_path):
    files = good_images(2)
    (tmp_path / "a.parquet").write_bytes(parquet_bytes(files, "img2dataset"))
    source = Location(str(tmp_path))
    with pytest.raises(InputError, match=r"no column 'photo'; it has key, jpg \(name the image column"):
        inventory(source, columns=ParquetColumns(image="photo"))
    with pytest.raises(InputError, match="column 'key' is string, not image bytes"):
        inventory(source, columns=ParquetColumns(image="key"))
    records = list(read(inventory(source).shards[0], source, ParquetColumns(image="jpg", id="jpg")))
    assert len(records) == 2


def test_unusable_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(InputError, match=f"^{tmp_path / 'missing'} does not exist$"):
        inventory(Location(str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no image files \(.*\.gif\) under"):
        inventory(Location(str(tmp_path / "empty")))
    write_files(tmp_path, {"a.png": b"x", "b.tar": b"y"})
    with pytest.raises(InputError, match="holds images and tar files; choose one with --input-format"):
        inventory(Location(str(tmp_path)))
    assert [s.format for s in inventory(Location(str(tmp_path)), "images").shards] == ["images"]
    with pytest.raises(InputError, match="--shard-size must be at least 1"):
        inventory(Location(str(tmp_path)), "images", shard_size=0)


def test_one_image_is_read_back_from_the_source_uri_the_job_recorded(tmp_path):
    images = good_images(5)
    write_files(tmp_path / "files", images)
    (tmp_path / "shard.tar").write_bytes(tar_bytes(images))
    (tmp_path / "rows.parquet").write_bytes(parquet_bytes(images, "datasets"))  # row groups of 3 rows
    name, data = list(images.items())[4]
    assert read_source(f"file://{tmp_path}/files/{name}", {}) == data
    assert read_source(f"file://{tmp_path}/shard.tar#{name}", {}) == data
    assert read_source(f"file://{tmp_path}/rows.parquet#4", {}) == data
    with pytest.raises(KeyError, match="no member missing.png"):
        read_source(f"file://{tmp_path}/shard.tar#missing.png", {})
    with pytest.raises(KeyError, match="no row 9"):
        read_source(f"file://{tmp_path}/rows.parquet#9", {})


def test_the_listing_goes_folder_by_folder_in_the_order_of_sorted_keys(tmp_path):
    write_files(tmp_path, {name: b"x" for name in ("a.png", "a/b.png", "a0.png", "a-x.png", "b/c/d.png", "b.txt")})
    source = Location(str(tmp_path))
    assert [key for key, _ in walk(source)] == sorted(source.files())


def test_the_first_shard_is_made_before_the_last_folder_is_listed(tmp_path, monkeypatch):
    images = good_images(2)
    for folder in ("a", "b", "c"):
        write_files(tmp_path / folder, images)
    source = Location(str(tmp_path))
    listed, ls = [], source.fs.ls
    monkeypatch.setattr(source.fs, "ls", lambda path, **options: listed.append(path) or ls(path, **options))
    found = listing(source)
    made = shards(found.format, found, 2)
    assert [f.key for f in next(made).files] == ["a/img-000.png", "a/img-001.jpg"]
    assert listed == [str(tmp_path), str(tmp_path / "a")], "one folder listed at a time, and only as needed"
    assert [shard.name for shard in made] == ["part-00001", "part-00002"] and listed[-1] == str(tmp_path / "c")


@pytest.mark.integration
def test_a_prefix_on_s3_is_listed_page_by_page_in_key_order(bucket, monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe({f"{bucket}/in/{name}": b"x" for name in ("a.png", "a/b.png", "a0.png", "a-x.png", "b/c/d.png", "b.txt")})
    fs.pipe(f"{bucket}/other.png", b"x")
    monkeypatch.setattr(inputs, "PAGE", 2)
    source = Location(f"s3://{bucket}/in")
    assert [key for key, _ in walk(source)] == sorted(source.files()) == ["a-x.png", "a.png", "a/b.png", "a0.png",
                                                                          "b.txt", "b/c/d.png"]
    found = inventory(source)
    assert found.ignored == 1 and all(f.etag and f.mtime is None for f in found.shards[0].files)
    assert list(walk(Location(f"s3://{bucket}-missing/in"))) == []
