"""Segment annotations: RLE that pycocotools decodes to the segment's pixels, points inside, filters, and the
bounded in-order pool of the export loop."""


import numpy as np
import pytest
from pycocotools import mask as rle_codec

from diffseg.regions import regions
from diffseg.visualize import label_png
from pipeline.export.annotations import (
    ExportError,
    Filters,
    Unusable,
    annotate,
    check_scores,
    encode_segment,
    inner_point,
    row_labels,
)
from tests.pipeline.export.data import blocks


@pytest.mark.parametrize("labels", [blocks(30, 44), blocks(17, 9, labels=3),
                                    np.arange(20 * 30).reshape(20, 30) % 300])  # 16-bit labels too
def test_each_rle_decodes_to_exactly_its_segment_with_its_area_and_box(labels):
    for region in regions(labels):
        found = encode_segment(labels, region.id)
        assert isinstance(found["segmentation"]["counts"], str) and found["segmentation"]["size"] == list(labels.shape)
        rle = {**found["segmentation"], "counts": found["segmentation"]["counts"].encode()}
        assert np.array_equal(rle_codec.decode(rle), labels == region.id)
        assert found["area"] == region.area and found["bbox"] == list(region.bbox)


def test_the_inner_point_is_in_the_segment_farthest_from_its_edge():
    labels = blocks(40, 40)
    for region in regions(labels):
        x, y = inner_point(labels, region.id, list(region.bbox))
        assert labels[y, x] == region.id
    ring = np.zeros((21, 21), dtype=np.int64)
    ring[2:19, 2:19] = 1
    ring[6:15, 6:15] = 0  # label 1 is a ring: its box's centre is not in it
    x, y = inner_point(ring, 1, [2, 2, 17, 17])
    assert ring[y, x] == 1 and min(x - 2, y - 2, 18 - x, 18 - y, abs(x - 10) - 4, abs(y - 10) - 4) >= 1
    assert inner_point(blocks(9, 9) * 0, 0, [0, 0, 9, 9]) == [4, 4]  # the centre of a whole image


def test_filters_keep_segments_by_area_score_and_stability():
    segment = {"id": 1, "area": 50, "bbox": [0, 0, 5, 10], "score": 0.6, "stability": 0.9}
    assert Filters().keeps(segment) and not Filters().active()
    assert Filters(min_area=50).keeps(segment) and not Filters(min_area=51).keeps(segment)
    assert Filters(min_score=0.6, min_stability=0.9).keeps(segment)
    assert not Filters(min_score=0.7).keeps(segment) and not Filters(min_stability=0.95).keeps(segment)
    assert not Filters(min_score=0.1).keeps({**segment, "score": None})  # unknown never passes


def test_filters_on_scores_an_output_does_not_have_are_refused():
    check_scores({"id", "area", "bbox"}, Filters(min_area=10))
    check_scores({"id", "area", "bbox", "score", "stability"}, Filters(min_score=0.5, min_stability=0.5))
    with pytest.raises(ExportError, match="^this output was labeled before scores existed; relabel to use "
                                          "--min-score and --min-stability$"):
        check_scores({"id", "area", "bbox"}, Filters(min_score=0.5, min_stability=0.5))


def test_annotations_follow_the_rows_segments_and_skip_what_the_filters_drop():
    labels = blocks(24, 32)
    segments = [{"id": r.id, "area": r.area, "bbox": list(r.bbox), "score": 0.25 * r.id} for r in regions(labels)]
    found = annotate(labels, segments + [{"id": 9, "area": 5, "bbox": [0, 0, 1, 1]}], Filters(min_score=0.5),
                     points=True)
    assert [a["segment_id"] for a in found] == [2, 3]  # 9 is listed but not in the mask
    assert [a["score"] for a in found] == [0.5, 0.75] and [a["stability"] for a in found] == [None, None]
    assert all(labels[a["point"][1], a["point"][0]] == a["segment_id"] for a in found)


def test_a_mask_that_does_not_decode_makes_the_row_unusable():
    assert row_labels({"mask": label_png(blocks(8, 8))}).shape == (8, 8)
    with pytest.raises(Unusable, match="mask does not decode"):
        row_labels({"mask": b"not a png"})
