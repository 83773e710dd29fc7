import numpy as np
import pytest
import torch

from diffseg.regions import Region, regions


def test_area_and_bbox_of_each_label():
    labels = torch.zeros(6, 8, dtype=torch.int64)
    labels[1:3, 2:7] = 1          # rows 1-2, cols 2-6
    labels[5, 0] = 3              # a single pixel; label 2 absent
    assert regions(labels) == [
        Region(id=0, area=48 - 10 - 1, bbox=(0, 0, 8, 6)),
        Region(id=1, area=10, bbox=(2, 1, 5, 2)),
        Region(id=3, area=1, bbox=(0, 5, 1, 1)),
    ]


def test_matches_a_direct_computation_on_random_maps():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 5, (37, 23)) * (rng.random((37, 23)) < 0.3)
    for region in regions(array):
        ys, xs = np.nonzero(array == region.id)
        assert region.area == len(ys)
        assert region.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    assert sum(r.area for r in regions(array)) == array.size


@pytest.mark.parametrize("bad", [np.zeros((0, 3), int), np.zeros(5, int), -np.ones((2, 2), int)])
def test_bad_label_maps_are_refused(bad):
    with pytest.raises(ValueError):
        regions(bad)
