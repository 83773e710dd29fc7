import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

from diffseg.pamr import median3x3, pamr, refined_winners
from tests.diffseg.rounding import EXP_ULPS, U, assert_within, gamma

DILATIONS = (1, 2, 4, 8)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`x (..., H, W)` read at (row + dy, column + dx), coordinates clamped into the image."""
    height, width = x.shape[-2:]
    rows = (torch.arange(height) + dy).clamp(0, height - 1)
    cols = (torch.arange(width) + dx).clamp(0, width - 1)
    return x[..., rows, :][..., cols]


def offsets(dilations: tuple[int, ...], centre: bool) -> list[tuple[int, int]]:
    return [
        (dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if centre or (dy, dx) != (0, 0)
    ]


def reference_logits(image: torch.Tensor, dilations: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 logits `(P, B, H, W)` of the neighbours of `image (B, C, H, W)`, one neighbour at a time; and the
    `(B, C, H, W)` ratio mean^2 / variance of the taps behind each standard deviation."""
    x = image.double()
    taps = [shift(x, dy, dx) for dy, dx in offsets(dilations, centre=True)]
    mean = sum(taps) / len(taps)
    variance = sum((t - mean) ** 2 for t in taps) / (len(taps) - 1)
    scale = 1e-8 + 0.1 * variance.sqrt()
    logits = torch.stack([-((x - shift(x, dy, dx)).abs() / scale).mean(dim=1) for dy, dx in offsets(dilations, False)])
    return logits, mean**2 / variance


def reference_pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations: tuple[int, ...]):
    """fp64 PAMR of `masks (B, K, H, W)`, already at the image size; and the `(P, B, H, W)` logits."""
    logits, _ = reference_logits(image, dilations)
    weights = logits.softmax(dim=0)
    m = masks.double()
    for _ in range(iterations):
        m = sum(w[:, None] * shift(m, dy, dx) for w, (dy, dx) in zip(weights, offsets(dilations, centre=False)))
    return m


def rounding_bound(image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations: tuple[int, ...]) -> float:
    """First-order bound on |fp32 PAMR - exact PAMR| for masks at the image size.

    - standard deviation of n taps by a stable (two-pass or Welford) method: relative error within
      gamma(2n + 4) (1 + mean^2 / variance);
    - a logit l: |x - y| (exact inputs), 0.1 s, + 1e-8, the division, and the mean over C channels add 6U and
      gamma(C), so |error| <= r |l| with r the sum;
    - softmax: l - max adds U |l - max|, exp EXP_ULPS ulps, the sum and division gamma(P) + U; a relative
      error e_k of each weight moves a weighted mean of values in [0, M] by at most M sum_k p_k |e_k|, and the
      weights' errors are those of their own logit plus the weighted mean of all;
    - one iteration: the sum of P products gamma(P) M, plus the weights' error; earlier errors pass through a
      weighted mean, so they add up over the iterations.
    """
    logits, kappa = reference_logits(image, dilations)
    n, channels, p = 9 * len(dilations), image.shape[1], logits.shape[0]
    relative = gamma(2 * n + 4) * (1 + kappa).amax(dim=1) + 6 * U + gamma(channels)
    top = logits.amax(dim=0)
    shifted = relative * (logits.abs() + top.abs()) + U * (logits - top).abs() + (EXP_ULPS + 1) * U
    weights = logits.softmax(dim=0)
    weight_error = 2 * (weights * shifted).sum(dim=0) + gamma(p) + U
    largest = float(masks.abs().max())
    return iterations * largest * float((weight_error + gamma(p)).max())


def random_inputs(seed: int, size=(2, 3, 20, 24), classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(size, generator=g)
    masks = torch.randn(size[0], classes, *size[2:], generator=g).mul(3).softmax(dim=1)
    return image, masks


@pytest.mark.parametrize(("seed", "iterations", "dilations"), [(0, 10, DILATIONS), (1, 3, (1,)), (2, 10, (1, 3))])
def test_pamr_equals_the_reference(seed, iterations, dilations):
    image, masks = random_inputs(seed)
    bound = rounding_bound(image, masks, iterations, dilations)
    assert_within(pamr(image, masks, iterations, dilations), reference_pamr(image, masks, iterations, dilations), bound)


def test_pamr_in_other_pixel_units_equals_the_reference():
    image, masks = random_inputs(3)
    image = (image * 40 + 128).round().clamp(0, 255)
    bound = rounding_bound(image, masks, 10, DILATIONS)
    assert_within(pamr(image, masks), reference_pamr(image, masks, 10, DILATIONS), bound)


def test_small_masks_are_resized_with_aligned_corners():
    image, _ = random_inputs(4)
    small = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(4))
    resized = F.interpolate(small, size=(20, 24), mode="bilinear", align_corners=True)
    refined = pamr(image, small)
    assert refined.shape == (2, 3, 20, 24)
    assert torch.equal(refined, pamr(image, resized))


def test_mask_edge_moves_onto_the_image_edge():
    g = torch.Generator().manual_seed(5)
    regions = torch.zeros(32, 32, dtype=torch.int64)
    regions[:, 14:] = 1
    image = regions.float().expand(1, 3, 32, 32) + 0.05 * torch.randn(1, 3, 32, 32, generator=g)
    misaligned = torch.zeros(32, 32, dtype=torch.int64)
    misaligned[:, 17:] = 1
    masks = F.one_hot(misaligned, 2).permute(2, 0, 1)[None].float()
    refined = pamr(image, masks).argmax(dim=1)[0]
    assert int((misaligned != regions).sum()) == 3 * 32
    assert torch.equal(refined, regions)


def test_masks_that_sum_to_one_keep_summing_to_one():
    image, masks = random_inputs(6)
    initial = float((masks.double().sum(dim=1) - 1).abs().max())
    sums = pamr(image, masks).double().sum(dim=1)
    # Each iteration: the weights sum to 1 within gamma(P) + U, and each new value is a sum of P rounded
    # products (gamma(P) of the sum over classes).
    p = 8 * len(DILATIONS)
    assert_within(sums, torch.ones_like(sums), initial + 10 * (2 * gamma(p) + U))


@pytest.mark.parametrize(("shape", "seed"), [((7, 9), 0), ((1, 5), 1), ((16, 16), 2), ((5, 1), 3)])
def test_median3x3_equals_scipy(shape, seed):
    labels = torch.randint(0, 6, shape, generator=torch.Generator().manual_seed(seed))
    expected = median_filter(labels.numpy(), size=3)
    filtered = median3x3(labels)
    assert filtered.dtype == labels.dtype
    assert np.array_equal(filtered.numpy(), expected)


def test_refined_winners_move_a_misplaced_edge_onto_the_images_at_the_detail_scale():
    # Two proposals on a 4 x 8 grid meet at grid column 4 (pixel 32 of 64); the image's edge is at pixel 20, on the
    # border of a detail cell at scale 2 (4 px each), 3 cells away. The refined map is the image's, at its size.
    regions = (torch.arange(64) >= 20).long().expand(32, 64)
    noise = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(7))
    image = regions.float().expand(3, 32, 64) + 0.05 * noise
    right = (torch.arange(8) >= 4).float().expand(4, 8).reshape(-1)
    proposals = torch.stack([1 - right, right])
    winners = refined_winners(proposals, (4, 8), 2, image, (32, 64))
    assert winners.dtype == torch.int64 and winners.shape == (32, 64)
    assert torch.equal(winners, regions)
