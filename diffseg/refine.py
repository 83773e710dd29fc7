"""K-Means refinement of merged proposals (the official demo's optional step)."""

from __future__ import annotations

import torch


def kmeans(points: torch.Tensor, centers: torch.Tensor, max_iter: int = 300, tol: float = 1e-4) -> torch.Tensor:
    """Lloyd's K-Means on the rows of `points (N, D)` from the initial `centers (K, D)`, in fp64.

    Stops when no assignment changes, or when the centers move less than `tol` times the mean per-feature
    variance of the points (scikit-learn's criterion). A cluster that loses all its points keeps its
    center. Returns the `(N,)` cluster index of every point.
    """
    points = points.double()
    centers = centers.double().clone()
    threshold = tol * points.var(dim=0, unbiased=False).mean()
    point_norms = (points * points).sum(dim=1, keepdim=True)
    labels = None
    for _ in range(max_iter):
        distances = point_norms - 2 * points @ centers.T + (centers * centers).sum(dim=1)
        new_labels = distances.argmin(dim=1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        one_hot = torch.zeros(len(centers), len(points), dtype=points.dtype, device=points.device)
        one_hot[labels, torch.arange(len(points), device=points.device)] = 1
        counts = one_hot.sum(dim=1, keepdim=True)
        updated = torch.where(counts > 0, (one_hot @ points) / counts.clamp_min(1), centers)
        shift = ((updated - centers) ** 2).sum()
        centers = updated
        if shift <= threshold:
            break
    return labels


def refine(attention: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
    """Cluster the `(N, N)` attention maps with K-Means seeded by `(K, N)` proposals; return the
    `(K', N)` means of the non-empty clusters, in cluster order."""
    labels = kmeans(attention, proposals)
    means = [attention[labels == k].mean(dim=0) for k in range(len(proposals)) if (labels == k).any()]
    return torch.stack(means)
