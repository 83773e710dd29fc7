"""Unsupervised segmentation metrics: pixel accuracy and mIoU after Hungarian matching of segments to classes.

Two protocols:

- "per-image" (the DiffSeg paper's): each image's segments are matched to classes on that image's own
  `num_classes x max(num_classes, K)` confusion histogram; TP, FP and FN per class are summed over the
  dataset. FP counts only the pixels of the matched segment; pixels of segments left unmatched (more
  segments than classes) count as FN of their true class.
- "dataset" (STEGO / PiCIE style, for methods whose cluster ids mean the same thing in every image): one
  matching on the histogram summed over the whole dataset.

Accuracy = sum TP / valid pixels; mIoU = mean over classes of TP / (TP + FP + FN), ignoring classes whose
denominator is 0 (never present and never predicted).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

PROTOCOLS = ("per-image", "dataset")


def confusion(prediction: np.ndarray, label: np.ndarray, num_classes: int, num_segments: int,
              ignore_index: int = -1) -> np.ndarray:
    """`(num_classes, num_segments)` int64 histogram: pixels of class c (rows) in segment k (columns).

    Pixels labelled `ignore_index` are left out. Raises `ValueError` on shape mismatch or out-of-range ids.
    """
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and label {label.shape} differ in shape")
    valid = label != ignore_index
    classes, segments = label[valid].astype(np.int64), prediction[valid].astype(np.int64)
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1} or {ignore_index}")
    if segments.size and (segments.min() < 0 or segments.max() >= num_segments):
        raise ValueError(f"predictions must be in 0..{num_segments - 1}")
    flat = np.bincount(classes * num_segments + segments, minlength=num_classes * num_segments)
    return flat.reshape(num_classes, num_segments)


def match(histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hungarian matching of classes (rows) to segments (columns) maximizing matched pixels.

    Returns per-class TP, FP and FN (int64, length = rows). The histogram must have at least as many
    columns as rows, so that every class gets a segment (possibly an empty one).
    """
    rows, columns = linear_sum_assignment(histogram, maximize=True)
    tp = np.zeros(histogram.shape[0], dtype=np.int64)
    fp = np.zeros_like(tp)
    tp[rows] = histogram[rows, columns]
    fp[rows] = histogram[:, columns].sum(axis=0) - tp[rows]
    fn = histogram.sum(axis=1) - tp
    return tp, fp, fn


def evaluate(predictions: Iterable[Any], labels: Iterable[Any], num_classes: int = 27, ignore_index: int = -1,
             protocol: str = "per-image") -> dict[str, Any]:
    """Score segment maps against class labels.

    Args:
        predictions: `(H, W)` integer arrays or tensors of segment ids 0..K-1 (K may differ per image).
        labels: matching `(H, W)` class ids in 0..num_classes-1, or `ignore_index`.
        protocol: "per-image" (the paper's) or "dataset".

    Returns:
        `accuracy` and `miou` (fractions in [0, 1]; NaN when nothing was scored), `iou` (per class, NaN for
        classes never present nor predicted), `images`, `pixels` (valid pixels), and the summed `tp`,
        `fp`, `fn` per class.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    tp = np.zeros(num_classes, dtype=np.int64)
    fp, fn = np.zeros_like(tp), np.zeros_like(tp)
    dataset_histogram = np.zeros((num_classes, num_classes), dtype=np.int64)
    images = 0
    for prediction, label in zip(predictions, labels, strict=True):
        prediction, label = _array(prediction), _array(label)
        segments = max(num_classes, int(prediction.max(initial=0)) + 1)
        histogram = confusion(prediction, label, num_classes, segments, ignore_index)
        images += 1
        if protocol == "per-image":
            image_tp, image_fp, image_fn = match(histogram)
            tp, fp, fn = tp + image_tp, fp + image_fp, fn + image_fn
        else:
            dataset_histogram = _grow(dataset_histogram, segments)
            dataset_histogram[:, :segments] += histogram
    if protocol == "dataset":
        tp, fp, fn = match(dataset_histogram)
    pixels = int((tp + fn).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    return {"accuracy": float(tp.sum() / pixels) if pixels else float("nan"),
            "miou": float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
            "iou": iou.tolist(), "images": images, "pixels": pixels,
            "tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist()}


def _array(value: Any) -> np.ndarray:
    array = value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"expected (H, W) maps, got shape {array.shape}")
    return array


def _grow(histogram: np.ndarray, columns: int) -> np.ndarray:
    if histogram.shape[1] >= columns:
        return histogram
    grown = np.zeros((histogram.shape[0], columns), dtype=histogram.dtype)
    grown[:, :histogram.shape[1]] = histogram
    return grown
