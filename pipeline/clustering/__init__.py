"""Dataset-wide pseudo-classes: the segments of a labeling output, described by their features (`--descriptors`),
clustered once over the whole dataset so that a class id means the same kind of thing in every image.

The job (`jobs/cluster.py`) samples a bounded number of descriptors uniformly over the output, trains spherical
k-means on them with faiss, then assigns every segment of every shard to its nearest centroid on a pool of Ray
actors, writing semantic masks (pixel = class id) in the labeling output's layout, exactly once and resumably.
"""
