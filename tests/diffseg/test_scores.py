"""Per-segment score and stability: their definitions on hand-made maps, and on planted attention."""

import pytest
import torch
import torch.nn.functional as F

from diffseg import DiffSegConfig
from diffseg.labels import label_map, label_map_with_margins
from diffseg.scores import best_iou, by_label, segment_means, stability
from diffseg.segment import segment_images, segment_images_scored
from synthetic.attention import planted_attention, random_partition


def test_segment_means_average_over_each_labels_pixels():
    labels = torch.tensor([[0, 0, 1], [2, 2, 2]], dtype=torch.uint8)
    values = torch.tensor([[1.0, 0.5, 0.25], [0.0, 0.3, 0.6]])
    # Label 3 has no pixel: 0. Exact: sums of at most 3 values with short binary expansions, in fp64.
    assert segment_means(labels, values, 4).tolist() == [0.75, 0.25, pytest.approx(0.3, abs=1e-7), 0.0]


def test_best_iou_is_each_segments_largest_overlap_over_union():
    labels = torch.tensor([[0, 0, 0, 1]])
    other = torch.tensor([[0, 0, 1, 1]])
    # label 0 (3 px): with other 0, 2 shared of 3 -> 2/3; label 1 (1 px): with other 1, 1 of 2 -> 1/2
    assert best_iou(labels, 2, other, 2).tolist() == pytest.approx([2 / 3, 1 / 2])
    assert stability(labels, 2, [(labels, 2), (other, 2)]).tolist() == pytest.approx([2 / 3, 1 / 2])


def test_margins_are_the_normalized_gap_between_the_two_best_proposals(monkeypatch):
    monkeypatch.setattr("diffseg.labels.CHUNK_ELEMENTS", 3 * 40 * 56)  # chunks of 3 proposals: merged across chunks
    proposals = torch.rand(7, 5 * 7, generator=torch.Generator().manual_seed(0))
    labels, margins, table = label_map_with_margins(proposals, (5, 7), (40, 56))
    upsampled = F.interpolate(proposals.reshape(7, 1, 5, 7), size=(40, 56), mode="bilinear",
                              align_corners=False)[:, 0]
    top = upsampled.topk(2, dim=0).values
    assert torch.equal(labels, label_map(proposals, (5, 7), (40, 56)))
    winners = upsampled.argmax(dim=0)
    assert torch.equal(table[winners], labels.long())  # each proposal's label
    assert all(table[p] == -1 for p in range(7) if not (winners == p).any())
    # The same fp32 values, compared and subtracted the same way: only the division's rounding may differ.
    torch.testing.assert_close(margins, (top[0] - top[1]) / top[0], rtol=2**-23, atol=0)
    assert margins.min() >= 0 and margins.max() <= 1


def test_one_proposal_wins_every_pixel_with_margin_one():
    labels, margins, table = label_map_with_margins(torch.ones(1, 4), (2, 2), (16, 16))
    assert labels.unique().tolist() == [0] and torch.equal(margins, torch.ones(16, 16)) and table.tolist() == [0]


def test_values_per_proposal_go_to_the_labels_of_the_proposals_that_have_one():
    # proposals 0 and 2 won no pixel; 1 and 3 are labels 0 and 1
    values = by_label(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([-1, 0, -1, 1]))
    assert values.tolist() == pytest.approx([0.2, 0.4, 0.0, 0.0])


@pytest.mark.parametrize("config", [DiffSegConfig(), DiffSegConfig(refine=True),
                                    DiffSegConfig(method="kmeans-c", num_clusters=4)])
def test_scored_segmentation_gives_the_same_label_maps_with_scores_in_range(config):
    maps = [planted_attention(random_partition(24, 32, regions=r, seed=r), noise=0.5) for r in (3, 7)]
    sizes = [(192, 256), (97, 131)]
    scored = segment_images_scored(maps, config, sizes)
    for result, labels in zip(scored, segment_images(maps, config, sizes), strict=True):
        assert torch.equal(result.labels, labels)  # exact: the same proposals and label map
        present = int(labels.max()) + 1
        for values in (result.score, result.stability):
            assert values.dtype == torch.float32 and len(values) >= present
            assert values[:present].min() >= 0 and values[:present].max() <= 1
            assert not values[present:].any()


def test_a_cleanly_planted_segmentation_is_stable_and_clearly_won():
    partition = random_partition(32, 32, regions=5, seed=3)
    (result,) = segment_images_scored([planted_attention(partition)], DiffSegConfig(), [(256, 256)])
    count = int(result.labels.max()) + 1
    assert count == 5
    # Every region is found at every threshold; the moved thresholds' proposals differ only slightly, which moves a
    # few boundary pixels at most.
    assert result.stability[:count].min() > 0.99
    # Planted maps put almost all mass in the own region: margins are near 1 but at bilinear boundary blends.
    assert result.score[:count].min() > 0.8
