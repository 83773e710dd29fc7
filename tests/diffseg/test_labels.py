"""label_map: per-pixel argmax of upsampled proposals, compacted, in the smallest integer dtype."""

import pytest
import torch
import torch.nn.functional as F

from diffseg.labels import label_dtype, label_map


def reference(proposals: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The definition: upsample every proposal at once, argmax (first index on ties), renumber by `unique`."""
    upsampled = F.interpolate(proposals.reshape(len(proposals), 1, *grid), size=size, mode="bilinear",
                              align_corners=False)[:, 0]
    winners = upsampled.argmax(dim=0)
    return torch.unique(winners, sorted=True, return_inverse=True)[1]


@pytest.mark.parametrize("count, dtype", [(1, torch.uint8), (256, torch.uint8), (257, torch.int16),
                                          (2**15, torch.int16), (2**15 + 1, torch.int32)])
def test_labels_come_in_the_smallest_integer_type_that_holds_them(count, dtype):
    assert label_dtype(count) == dtype
    assert torch.iinfo(dtype).max >= count - 1


@pytest.mark.parametrize("count, grid, size", [(5, (8, 12), (61, 97)), (40, (16, 16), (128, 128)),
                                               (300, (20, 20), (50, 70))])
def test_a_label_map_is_the_compacted_argmax_of_the_upsampled_proposals(count, grid, size):
    proposals = torch.rand(count, grid[0] * grid[1], generator=torch.Generator().manual_seed(count)) ** 8
    proposals[::3] = 0  # these win no pixel: their labels must be skipped and the others renumbered
    labels = label_map(proposals, grid, size)
    assert labels.dtype == label_dtype(count) and labels.shape == size
    assert int(labels.max()) < count - len(range(0, count, 3))
    assert torch.equal(labels.long(), reference(proposals, grid, size))


def test_ties_go_to_the_earlier_proposal_across_chunks(monkeypatch):
    monkeypatch.setattr("diffseg.labels.CHUNK_ELEMENTS", 2 * 64)  # two proposals per chunk of an 8x8 map
    proposals = torch.zeros(5, 4)
    proposals[[1, 3]] = 1.0  # proposals 1 and 3 (in different chunks) tie everywhere
    assert torch.equal(label_map(proposals, (2, 2), (8, 8)), torch.zeros(8, 8, dtype=torch.uint8))
