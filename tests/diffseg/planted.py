"""Planted segmentations (features with known segments) and scoring a predicted partition against one."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def matched_miou(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean IoU over the true regions after a one-to-one Hungarian matching of predicted labels."""
    pred = prediction.reshape(-1).numpy()
    true = truth.reshape(-1).numpy()
    k_pred, k_true = pred.max() + 1, true.max() + 1
    confusion = np.zeros((k_true, k_pred))
    np.add.at(confusion, (true, pred), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    ious = np.zeros(k_true)
    for r, c in zip(rows, cols):
        ious[r] = confusion[r, c] / (confusion[r].sum() + confusion[:, c].sum() - confusion[r, c])
    return float(ious.mean())


def planted_features(regions: torch.Tensor, channels: int = 64, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    """fp32 `(h, w, channels)` features in which every region of the int64 map `regions` `(h, w)` has its own
    random direction, plus Gaussian noise of `noise` per channel relative to a unit direction."""
    generator = torch.Generator().manual_seed(seed)
    count = int(regions.max()) + 1
    directions = torch.nn.functional.normalize(torch.randn(count, channels, generator=generator), dim=1)
    return directions[regions] + noise * torch.randn(*regions.shape, channels, generator=generator) / channels**0.5


def quadrants(height: int, width: int, split: tuple[int, int] | None = None) -> torch.Tensor:
    """int64 `(height, width)`: four rectangular regions 0..3, cut at `split` `(row, column)` (default the middle)."""
    row, column = split or (height // 2, width // 2)
    rows = (torch.arange(height) >= row).long()[:, None]
    columns = (torch.arange(width) >= column).long()[None, :]
    return rows * 2 + columns
