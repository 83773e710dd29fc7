import pytest
import torch

from diffseg import DiffSegConfig, segment_from_attention
from diffseg.aggregate import aggregate
from diffseg.baselines import kmeans_proposals
from synthetic.attention import planted_attention, random_partition
from tests.diffseg.planted import matched_miou


def kmeans(k: int) -> DiffSegConfig:
    return DiffSegConfig(method="kmeans-c", num_clusters=k)


def test_kmeans_with_the_true_k_recovers_planted_regions():
    partition = random_partition(32, 32, 5, seed=3)
    labels = segment_from_attention(planted_attention(partition, noise=0.2), kmeans(5))
    truth = partition.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert labels.shape == (256, 256) and labels.max() <= 4
    assert matched_miou(labels, truth) >= 0.95


def test_a_constant_k_gives_at_most_k_segments_and_is_deterministic():
    maps = planted_attention(random_partition(16, 24, 9, seed=1), noise=0.3)
    first = segment_from_attention(maps, kmeans(4), output_size=(50, 70))
    assert first.shape == (50, 70) and len(first.unique()) <= 4
    assert torch.equal(first, segment_from_attention(maps, kmeans(4), output_size=(50, 70)))


def test_a_batch_is_clustered_image_by_image():
    partitions = [random_partition(16, 16, 3, seed=0), random_partition(16, 16, 6, seed=1)]
    per_image = [planted_attention(p, noise=0.1) for p in partitions]
    batched = segment_from_attention([torch.stack(level) for level in zip(*per_image)], kmeans(6))
    assert batched.shape == (2, 128, 128)
    # Exact: a batch is clustered image by image, the same computation on the same values as one image alone.
    for maps, labels in zip(per_image, batched):
        assert torch.equal(labels, segment_from_attention(maps, kmeans(6)))


def test_k_per_image_as_kmeans_s_does():
    partition = random_partition(16, 16, 3, seed=0)
    labels = [segment_from_attention(planted_attention(partition, noise=0.1), kmeans(k)) for k in (1, 2, 3)]
    assert [len(label.unique()) for label in labels] == [1, 2, 3]


def test_bad_cluster_counts_are_refused():
    attention = aggregate(planted_attention(random_partition(8, 8, 2, seed=0)))
    with pytest.raises(ValueError, match="num_clusters must be in 1..64"):
        kmeans_proposals(attention, 65)
    with pytest.raises(ValueError, match="num_clusters must be at least 1"):
        kmeans(0)
    with pytest.raises(ValueError, match="refine applies to the diffseg method only"):
        DiffSegConfig(method="kmeans-c", refine=True)
    with pytest.raises(ValueError, match="method must be one of"):
        DiffSegConfig(method="kmeans-s")
