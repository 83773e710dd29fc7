import pytest
import torch

from diffseg.baselines import kmeans_from_attention
from tests.diffseg.planted import matched_miou, planted_attention, random_partition


def test_kmeans_with_the_true_k_recovers_planted_regions():
    partition = random_partition(32, 32, 5, seed=3)
    labels = kmeans_from_attention(planted_attention(partition, noise=0.2), num_clusters=5)
    truth = partition.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert labels.shape == (256, 256) and labels.max() <= 4
    assert matched_miou(labels, truth) >= 0.95


def test_a_constant_k_gives_at_most_k_segments_and_is_deterministic():
    maps = planted_attention(random_partition(16, 24, 9, seed=1), noise=0.3)
    first = kmeans_from_attention(maps, num_clusters=4, output_size=(50, 70))
    assert first.shape == (50, 70) and len(first.unique()) <= 4
    assert torch.equal(first, kmeans_from_attention(maps, num_clusters=4, output_size=(50, 70)))


def test_one_k_per_image_in_a_batch():
    partitions = [random_partition(16, 16, 3, seed=0), random_partition(16, 16, 6, seed=1)]
    per_image = [planted_attention(p, noise=0.1) for p in partitions]
    batched = [torch.stack(level) for level in zip(*per_image)]
    labels = kmeans_from_attention(batched, num_clusters=[3, 6])
    assert labels.shape == (2, 128, 128)
    assert [len(labels[i].unique()) for i in range(2)] == [3, 6]


def test_bad_cluster_counts_are_refused():
    maps = planted_attention(random_partition(8, 8, 2, seed=0))
    with pytest.raises(ValueError, match="num_clusters must be in 1..64"):
        kmeans_from_attention(maps, num_clusters=65)
    with pytest.raises(ValueError, match="2 cluster counts for 1 images"):
        kmeans_from_attention(maps, num_clusters=[2, 3])
