"""Scoring a predicted partition against a planted one."""

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
