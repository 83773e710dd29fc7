import numpy as np
import pytest
import torch

from diffseg.regions import Region, regions


def reference(array: np.ndarray) -> list[Region]:
    """Area and bbox of each label, straight from its pixels."""
    found = []
    for label in np.unique(array):
        ys, xs = np.nonzero(array == label)
        found.append(Region(int(label), len(ys), (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                                  int(ys.max() - ys.min() + 1))))
    return found


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
    assert regions(array) == reference(array)
    assert sum(r.area for r in regions(array)) == array.size


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64])
def test_every_integer_dtype_as_array_or_tensor_gives_the_reference(dtype):
    rng = np.random.default_rng(1)
    high = 300 if np.iinfo(dtype).max > 255 else 256
    blocks = rng.integers(0, high, (7, 9)).repeat(5, axis=0).repeat(4, axis=1)  # smooth: a few runs per row
    noisy = rng.integers(0, high, (41, 29))                                      # a run per pixel
    for array in (blocks.astype(dtype), noisy.astype(dtype), noisy.astype(dtype).T, np.full((1, 1), 7, dtype)):
        expected = reference(array)
        assert regions(array) == expected
        assert regions(torch.from_numpy(np.ascontiguousarray(array))) == expected


@pytest.mark.parametrize("bad", [np.zeros((0, 3), int), np.zeros(5, int), -np.ones((2, 2), int), np.ones((2, 2))])
def test_bad_label_maps_are_refused(bad):
    with pytest.raises(ValueError):
        regions(bad)
