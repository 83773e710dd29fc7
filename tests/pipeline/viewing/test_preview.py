"""The output viewer's summary and sampling, on outputs written by the job's own writer."""

from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from diffseg import DiffSegConfig
from diffseg.visualize import label_png
from pipeline.store.dataset import OutputDataset, Row
from pipeline.store.location import Location, StorageError
from pipeline.viewing.preview import Overview, overview, write_preview
from synthetic.photos import photo


def output_with(folder, rows_per_shard: list[list[Row]]) -> Location:
    location = Location(str(folder))
    dataset = OutputDataset(location)
    dataset.claim({"config": DiffSegConfig(resolution=128).to_dict(), "model": {"model": "tiny"}})
    for index, rows in enumerate(rows_per_shard):
        dataset.write(f"part-{index:05d}", rows, {"model": "tiny", "run_id": "run-1", "config_hash": "abc"})
    return location


def labeled(image_id: str, source_uri: str, segments: int, size=(24, 32)) -> Row:
    mask = torch.arange(size[0] * size[1]).reshape(size) % segments
    return Row(image_id, source_uri, size[1], size[0], label_png(mask), segments, [])


def test_thousands_of_images_are_summarized_and_sampled_evenly(tmp_path):
    shards = [[labeled(f"img-{s}-{i}", f"file://{tmp_path}/gone-{s}-{i}.png", 1 + (s * 500 + i) % 7)
               if i % 50 else Row.failed(f"img-{s}-{i}", "x", f"cannot decode image (detail {i})")
               for i in range(500)] for s in range(4)]
    view = overview(output_with(tmp_path / "out", shards), sample=5)
    assert view.images == 2000 and len(view.failed) == 40 and len(view.segments) == 1960
    # evenly over the 1,960 labeled rows, first and last included
    assert [item.image_id for item in view.shown] == ["img-0-1", "img-1-1", "img-2-1", "img-2-499", "img-3-499"]
    assert all(item.note.startswith("photo not readable") for item in view.shown)
    assert view.shown[0].provenance == {"model": "tiny", "run_id": "run-1", "config_hash": "abc",
                                        "file": "part-00000.parquet"}
    page = write_preview(view, tmp_path / "view").read_text()
    assert "2000 image(s): 1960 labeled, 40 failed (2.0% errors)" in page
    assert "<tr><td>cannot decode image</td><td>40</td></tr>" in page  # one reason, whatever the details
    assert page.count("<figure>") == 5


def test_a_readable_photo_is_shown_under_its_mask(tmp_path):
    photo(32, 24, seed=1).save(tmp_path / "a.png")
    view = overview(output_with(tmp_path / "out", [[labeled("a.png", f"file://{tmp_path}/a.png", 3)]]))
    (item,) = view.shown
    assert item.note == "" and item.segments == 3 and item.picture.size == (32, 24)
    mask_alone = overview(output_with(tmp_path / "out2", [[labeled("a.png", f"file://{tmp_path}/b.png", 3)]]))
    difference = np.abs(np.asarray(item.picture, float) - np.asarray(mask_alone.shown[0].picture, float))
    assert difference.mean() > 10  # the photo shows through the colors


class Elements(HTMLParser):
    """Every start tag of a page with its attributes, as a browser's parser reads them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_ids_with_markup_and_quotes_are_shown_as_text(tmp_path):
    hostile = "<script>alert(\"x\")</script>' onerror='x"
    photo(32, 24, seed=1).save(tmp_path / "a.png")
    view = overview(output_with(tmp_path / "out", [[
        labeled(hostile, f"file://{tmp_path}/a.png", 3),
        Row.failed(f"<img src=x onerror=alert(1)>{hostile}", "x", "cannot decode image"),
    ]]))
    page = write_preview(view, tmp_path / "view").read_text()
    tags = Elements(page).tags
    assert "script" not in {tag for tag, _ in tags}
    (image,) = [attributes for tag, attributes in tags if tag == "img"]
    assert set(image) == {"src", "width", "height", "alt"}  # the quote did not end the alt attribute
    assert image["alt"] == f"{hostile}: 3 segment(s)"
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def page_of(tmp_path, **view) -> str:
    return write_preview(Overview("s3://b/masks", {}, **view), tmp_path / "page").read_text()


def test_the_page_has_a_histogram_of_segments_and_the_reasons_images_failed(tmp_path):
    page = page_of(tmp_path, images=8, segments=[1, 1, 2, 5, 5, 5],
                   failed=[("a.png", "cannot decode image (broken data stream)"), ("b.png", "cannot decode image (x)")])
    assert "<td>5</td><td>3</td>" in page and "median 3, mean 3.2, max 5" in page
    assert "<tr><td>cannot decode image</td><td>2</td></tr>" in page, "reasons grouped without their details"
    wide = page_of(tmp_path, images=100, segments=list(range(1, 101)))
    assert "<td>1-5</td><td>5</td>" in wide and "<td>96-100</td><td>5</td>" in wide, "at most 20 bins"
    empty = page_of(tmp_path, images=0)
    assert "Segments per image" not in empty and "Why images failed" not in empty


def test_a_folder_that_is_not_an_output_is_refused(tmp_path):
    with pytest.raises(StorageError, match="not a labeling job's output"):
        overview(Location(str(tmp_path)))
