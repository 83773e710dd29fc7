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

How well a label map's edges follow the true ones, whatever the ids: the boundary F-score (`boundary_f_score`,
Csurka et al., BMVC 2013; the F-measure of DAVIS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
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


class Match(NamedTuple):
    """The outcome of matching one histogram: per-class counts and the segment each class got."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    segment: np.ndarray
    """`(classes,)` column matched to each class."""


def match(histogram: np.ndarray) -> Match:
    """Hungarian matching of classes (rows) to segments (columns) maximizing matched pixels.

    Returns per-class TP, FP and FN (int64, length = rows) and the matched column of each class. The
    histogram must have at least as many columns as rows, so that every class gets a segment (possibly an
    empty one).
    """
    rows, columns = linear_sum_assignment(histogram, maximize=True)
    tp = np.zeros(histogram.shape[0], dtype=np.int64)
    fp = np.zeros_like(tp)
    segment = np.zeros_like(tp)
    tp[rows] = histogram[rows, columns]
    fp[rows] = histogram[:, columns].sum(axis=0) - tp[rows]
    segment[rows] = columns
    return Match(tp, fp, histogram.sum(axis=1) - tp, segment)


@dataclass(frozen=True)
class ImageScore:
    """One image's scores under its own (per-image) matching."""

    accuracy: float
    """Matched pixels / valid pixels; NaN when the image has no valid pixel."""
    miou: float
    """Mean IoU over the classes present or matched to a non-empty segment; NaN when there is none."""
    pixels: int
    """Valid (not ignored) pixels."""
    classes: int
    """Classes present among the valid pixels."""
    segments: int
    """Segments predicted (over all pixels, ignored ones included)."""
    segment_class: np.ndarray
    """`(K,)` class matched to each predicted segment id, -1 for segments left unmatched."""


class Evaluation:
    """Scores accumulated image by image: `add` each (prediction, label) pair, then read `result()`.

    Args:
        num_classes: classes of the labels (27 for COCO-Stuff-27 and Cityscapes).
        ignore_index: label value of pixels that are not scored.
        protocol: "per-image" (the paper's) or "dataset" (see the module docstring).
    """

    def __init__(self, num_classes: int = 27, ignore_index: int = -1, protocol: str = "per-image") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.num_classes, self.ignore_index, self.protocol = num_classes, ignore_index, protocol
        self.tp = np.zeros(num_classes, dtype=np.int64)
        self.fp, self.fn = np.zeros_like(self.tp), np.zeros_like(self.tp)
        self.histogram = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.images = 0

    def add(self, prediction: Any, label: Any) -> ImageScore:
        """Score one `(H, W)` prediction (segment ids 0..K-1) against its `(H, W)` label; returns the image's
        own scores. Raises `ValueError` on shape mismatch or out-of-range ids."""
        prediction, label = _array(prediction), _array(label)
        segments = int(prediction.max(initial=0)) + 1
        histogram = confusion(prediction, label, self.num_classes, max(self.num_classes, segments),
                              self.ignore_index)
        own = match(histogram)
        self.images += 1
        if self.protocol == "per-image":
            self.tp, self.fp, self.fn = self.tp + own.tp, self.fp + own.fp, self.fn + own.fn
        else:
            self.histogram = _grow(self.histogram, histogram.shape[1])
            self.histogram[:, :histogram.shape[1]] += histogram
        segment_class = np.full(histogram.shape[1], -1, dtype=np.int64)
        segment_class[own.segment] = np.arange(self.num_classes)
        summary = _summary(own.tp, own.fp, own.fn)
        return ImageScore(accuracy=summary["accuracy"], miou=summary["miou"], pixels=summary["pixels"],
                          classes=int((histogram.sum(axis=1) > 0).sum()), segments=segments,
                          segment_class=segment_class[:segments])

    def result(self) -> dict[str, Any]:
        """`accuracy` and `miou` (fractions in [0, 1]; NaN when nothing was scored), `iou` (per class, NaN for
        classes never present nor predicted), `images`, `pixels` (valid pixels), and the summed `tp`, `fp`,
        `fn` per class."""
        tp, fp, fn = (self.tp, self.fp, self.fn) if self.protocol == "per-image" else match(self.histogram)[:3]
        return {**_summary(tp, fp, fn), "images": self.images}


def evaluate(predictions: Iterable[Any], labels: Iterable[Any], num_classes: int = 27, ignore_index: int = -1,
             protocol: str = "per-image") -> dict[str, Any]:
    """Score segment maps against class labels (`Evaluation` over the pairs).

    Args:
        predictions: `(H, W)` integer arrays or tensors of segment ids 0..K-1 (K may differ per image).
        labels: matching `(H, W)` class ids in 0..num_classes-1, or `ignore_index`.
        protocol: "per-image" (the paper's) or "dataset".

    Returns:
        `Evaluation.result()`: `accuracy` and `miou` (fractions in [0, 1]), per-class `iou`, and more.
    """
    evaluation = Evaluation(num_classes, ignore_index, protocol)
    for prediction, label in zip(predictions, labels, strict=True):
        evaluation.add(prediction, label)
    return evaluation.result()


def boundaries(labels: Any) -> np.ndarray:
    """bool `(H, W)`: the pixels of the `(H, W)` label map whose right or lower neighbour has another label, so one
    pixel on one side of every edge between two labels (the image's border is no boundary)."""
    labels = _array(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def boundary_f_score(prediction: Any, label: Any, tolerance: float = 2.0) -> float:
    """Boundary F-score of an `(H, W)` label map against the true one (ids need not match, only edges count):
    2PR / (P + R), P the share of predicted `boundaries` pixels within `tolerance` pixels (Euclidean, inclusive) of
    a true one, R the share of true ones within it of a predicted one. P is 1 when nothing is predicted as a
    boundary, R when nothing is one; F is 0 when both are 0. Raises `ValueError` on shape mismatch."""
    predicted, true = boundaries(prediction), boundaries(label)
    if predicted.shape != true.shape:
        raise ValueError(f"prediction {predicted.shape} and label {true.shape} differ in shape")
    precision, recall = _near(predicted, true, tolerance), _near(true, predicted, tolerance)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _near(points: np.ndarray, targets: np.ndarray, tolerance: float) -> float:
    """The share of the true pixels of `points` within `tolerance` pixels of a true pixel of `targets` (two bool
    maps of one shape); 1 when `points` has none, else 0 when `targets` has none."""
    if not points.any():
        return 1.0
    if not targets.any():
        return 0.0
    return float((distance_transform_edt(~targets)[points] <= tolerance).mean())


def _summary(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, Any]:
    pixels = int((tp + fn).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
    return {"accuracy": float(tp.sum() / pixels) if pixels else float("nan"),
            "miou": float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
            "iou": iou.tolist(), "pixels": pixels, "tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist()}


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
