import math

import numpy as np
import pytest
import torch

from diffseg.metrics import Evaluation, boundaries, boundary_f_score, confusion, evaluate, match


def close(actual: list[float], expected: list[float]) -> bool:
    return all((math.isnan(a) and math.isnan(e)) or math.isclose(a, e) for a, e in zip(actual, expected, strict=True))


def test_a_relabelled_perfect_prediction_scores_one():
    label = np.array([[0, 0, 2], [1, 1, 2]])
    result = evaluate([(label + 1) % 3], [label], num_classes=3)
    assert (result["accuracy"], result["miou"], result["images"], result["pixels"]) == (1.0, 1.0, 1, 6)


def test_more_segments_than_classes_count_the_unmatched_segment_as_missed():
    # class 0 spans segments 0 and 1 (2 pixels each), class 1 is segment 2: class 0 keeps one of its two halves.
    label, prediction = np.array([[0, 0, 0, 0, 1, 1]]), np.array([[0, 0, 1, 1, 2, 2]])
    result = evaluate([prediction], [label], num_classes=2)
    assert (result["tp"], result["fp"], result["fn"]) == ([2, 2], [0, 0], [2, 0])
    assert result["accuracy"] == 4 / 6 and close(result["iou"], [0.5, 1.0]) and result["miou"] == 0.75


def test_a_class_absent_from_the_image_is_matched_to_a_leftover_segment():
    # 3 classes, only class 0 present, split over 2 segments: one absent class gets the other segment as FP,
    # the third absent class meets an empty segment and has no IoU.
    result = evaluate([np.array([[0, 0, 1, 1]])], [np.array([[0, 0, 0, 0]])], num_classes=3)
    assert result["accuracy"] == 0.5
    assert sorted(result["iou"], key=lambda v: (math.isnan(v), v))[:2] == [0.0, 0.5]
    assert sum(math.isnan(v) for v in result["iou"]) == 1 and result["miou"] == 0.25


def test_a_single_segment():
    result = evaluate([np.zeros((2, 2), int)], [np.array([[0, 0], [1, 1]])], num_classes=2)
    assert (result["tp"], result["fp"], result["fn"]) in (([2, 0], [2, 0], [0, 2]), ([0, 2], [0, 2], [2, 0]))
    assert result["accuracy"] == 0.5 and result["miou"] == 0.25


def test_ignored_pixels_and_all_ignore_images_count_for_nothing():
    label = np.array([[0, -1], [1, -1]])
    prediction = np.array([[1, 1], [0, 1]])  # the ignored pixels would be wrong
    result = evaluate([prediction, np.zeros((2, 2), int)], [label, -np.ones((2, 2), int)], num_classes=2)
    assert (result["accuracy"], result["miou"], result["images"], result["pixels"]) == (1.0, 1.0, 2, 2)
    nothing = evaluate([np.zeros((2, 2), int)], [-np.ones((2, 2), int)], num_classes=2)
    assert math.isnan(nothing["accuracy"]) and math.isnan(nothing["miou"])


def test_per_image_matching_sums_over_images():
    labels = [np.array([[0, 0, 1]]), np.array([[1, 1, 1, 0]])]
    predictions = [np.array([[5, 5, 2]]), np.array([[0, 0, 1, 1]])]
    # image 1: class 0 -> segment 5 (2 px), class 1 -> segment 2 (1 px); all right.
    # image 2: class 1 -> segment 0 (2 px; segment 1 holds 1 px of class 1 and the class-0 pixel), class 0 ->
    # segment 1 (1 px right, 1 px of class 1 as FP).
    result = evaluate(predictions, labels, num_classes=2)
    assert (result["tp"], result["fp"], result["fn"]) == ([3, 3], [1, 0], [0, 1])
    assert result["accuracy"] == 6 / 7 and close(result["iou"], [3 / 4, 3 / 4])


def test_the_dataset_protocol_matches_once_over_all_images():
    labels = [np.array([[0, 1]]), np.array([[0, 1]])]
    consistent = [np.array([[1, 0]]), np.array([[1, 0]])]
    swapped = [np.array([[1, 0]]), np.array([[0, 1]])]
    assert evaluate(consistent, labels, num_classes=2, protocol="dataset")["accuracy"] == 1.0
    assert evaluate(swapped, labels, num_classes=2, protocol="dataset")["accuracy"] == 0.5
    assert evaluate(swapped, labels, num_classes=2, protocol="per-image")["accuracy"] == 1.0
    grown = evaluate([np.array([[0, 1, 2, 30]])], [np.array([[0, 1, 1, 1]])], num_classes=2, protocol="dataset")
    assert grown["tp"] == [1, 1] and grown["pixels"] == 4


def test_tensors_work_and_bad_input_is_refused():
    assert evaluate([torch.tensor([[0, 1]])], [torch.tensor([[1, 0]])], num_classes=2)["miou"] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate([np.zeros((2, 3), int)], [np.zeros((3, 2), int)])
    with pytest.raises(ValueError, match="labels must be in 0..26 or -1"):
        evaluate([np.zeros((1, 1), int)], [np.full((1, 1), 27)])
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate([], [], protocol="global")
    with pytest.raises(ValueError):
        evaluate([np.zeros((1, 1), int)], [])


def test_confusion_and_match_are_the_building_blocks():
    histogram = confusion(np.array([[0, 1, 1]]), np.array([[1, 1, 0]]), num_classes=2, num_segments=2)
    assert histogram.tolist() == [[0, 1], [1, 1]]
    tp, fp, fn, segment = match(histogram)
    assert tp.tolist() == [1, 1] and fp.tolist() == [1, 0] and fn.tolist() == [0, 1]
    assert segment.tolist() == [1, 0]


def test_each_image_gets_its_own_scores_and_the_class_of_each_segment():
    evaluation = Evaluation(num_classes=3)
    # segments 0 and 2 are class 1 and class 0; segment 1 (1 px of class 1) is left over; one pixel ignored.
    score = evaluation.add(np.array([[0, 0, 0, 1, 2, 2]]), np.array([[1, 1, 1, 1, 0, -1]]))
    assert (score.accuracy, score.pixels, score.classes, score.segments) == (4 / 5, 5, 2, 3)
    assert score.segment_class.tolist() == [1, 2, 0]  # the absent class 2 takes the leftover segment
    assert math.isclose(score.miou, (1.0 + 0.75 + 0.0) / 3)
    assert evaluation.add(np.zeros((1, 2), int), np.array([[2, 2]])).accuracy == 1.0
    assert evaluation.result()["images"] == 2 and evaluation.result()["tp"] == [1, 3, 2]
    ignored = Evaluation(num_classes=2).add(np.zeros((1, 2), int), -np.ones((1, 2), int))
    assert math.isnan(ignored.accuracy) and math.isnan(ignored.miou) and ignored.classes == 0



def columns(width: int, cuts: list[int], height: int = 6) -> np.ndarray:
    """`(height, width)` vertical bands: label i from column cuts[i - 1] up to cuts[i]."""
    return np.tile(np.searchsorted(cuts, np.arange(width), side="right"), (height, 1))


def test_boundaries_are_one_pixel_on_one_side_of_every_edge():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    # (0, 1) and (1, 1) touch label 1 on their right; (1, 0), (1, 1) and (1, 2) touch label 2 below.
    assert boundaries(labels).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 0, 0]]


def test_identical_or_relabelled_maps_score_one_at_any_tolerance():
    labels = columns(16, [5, 11])
    for tolerance in (0, 2):
        assert boundary_f_score(labels, labels, tolerance) == 1.0
        assert boundary_f_score((labels + 1) % 3, labels, tolerance) == 1.0  # only the edges count, not the ids


def test_an_edge_one_pixel_off_counts_within_the_tolerance_only():
    truth, shifted = columns(16, [8]), columns(16, [9])
    assert boundary_f_score(shifted, truth, 2) == 1.0 and boundary_f_score(shifted, truth, 1) == 1.0
    assert boundary_f_score(shifted, truth, 0) == 0.0  # no predicted edge pixel on a true one: P = R = 0


def test_the_tolerance_is_a_distance_in_pixels():
    # A horizontal edge two rows below the true one is 2 px away: within 2, not within 1.9.
    truth = np.repeat(np.arange(2), 6)[:, None].repeat(8, axis=1)
    lower = np.roll(truth, 2, axis=0)
    lower[:2] = 0
    assert boundary_f_score(lower, truth, 2) == 1.0 and boundary_f_score(lower, truth, 1.9) == 0.0


def test_a_missed_edge_costs_recall_and_a_spurious_one_precision():
    truth = columns(16, [4, 12])
    # Half of the true boundary pixels are found, every predicted one is true: P = 1, R = 1/2, F = 2/3.
    assert math.isclose(boundary_f_score(columns(16, [4]), truth), 2 / 3)
    # Every true edge found, half of the predicted ones spurious: P = 1/2, R = 1, F = 2/3.
    assert math.isclose(boundary_f_score(columns(16, [4, 8, 12, 14]), truth, 1), 2 / 3)


def test_maps_without_edges():
    flat, split = np.zeros((4, 4), int), columns(4, [2], height=4)
    assert boundary_f_score(flat, flat) == 1.0  # both agree there is no edge
    assert boundary_f_score(flat, split) == 0.0 and boundary_f_score(split, flat) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        boundary_f_score(flat, np.zeros((4, 5), int))
