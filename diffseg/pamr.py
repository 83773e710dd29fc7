"""Pixel-Adaptive Mask Refinement (Araslanov & Roth, CVPR 2020), as DiffCut's evaluation applies it, and the
3x3 median filter that follows it there; `refined_winners` applies both to a label map, for DiffCut and DiffSeg."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .labels import winning_proposals

OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
"""The 3x3 taps, in units of the dilation; the centre (0, 0) is the fifth."""


def taps(x: torch.Tensor, dilations: tuple[int, ...], centre: bool) -> torch.Tensor:
    """The 3x3 neighbours of every pixel of `x (B, C, H, W)` at each dilation, edges replicated:
    `(B, C, P, H, W)` with P = 9 (with the centre) or 8 (without) per dilation, dilation-major."""
    height, width = x.shape[-2:]
    shifted = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        for dy, dx in OFFSETS:
            if centre or (dy, dx) != (0, 0):
                top, left = d + dy * d, d + dx * d
                shifted.append(padded[..., top : top + height, left : left + width])
    return torch.stack(shifted, dim=2)


def local_affinity(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """Weights `(B, 1, P, H, W)` of the P = 8 len(dilations) neighbours of every pixel of `image (B, C, H, W)`:
    the softmax over neighbours of -|x - neighbour| / (1e-8 + 0.1 std), averaged over channels, std the unbiased
    standard deviation of the 9 len(dilations) taps (centre included at each dilation) of that channel."""
    spread = taps(image, dilations, centre=True).std(dim=2, keepdim=True)
    distance = (image[:, :, None] - taps(image, dilations, centre=False)).abs()
    logits = (-distance / (1e-8 + 0.1 * spread)).mean(dim=1, keepdim=True)
    return logits.softmax(dim=2)


def pamr(
    image: torch.Tensor, masks: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = (1, 2, 4, 8)
) -> torch.Tensor:
    """Refine the soft or one-hot `masks (B, K, h, w)` along the edges of `image (B, C, H, W)` (any units: an
    affine change of the pixel values changes nothing beyond the 1e-8 guard); returns `(B, K, H, W)` fp32.

    Masks of another size are first resized bilinearly with aligned corners. Each of the `iterations` replaces
    every mask value by the affinity-weighted mean of its neighbours at the `dilations` (pixels). The weights sum
    to 1, so masks that sum to 1 over K keep doing so.
    """
    image, masks = image.float(), masks.float()
    if masks.shape[-2:] != image.shape[-2:]:
        masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=True)
    weights = local_affinity(image, dilations)
    for _ in range(iterations):
        masks = (taps(masks, dilations, centre=False) * weights).sum(dim=2)
    return masks


def median3x3(labels: torch.Tensor) -> torch.Tensor:
    """3x3 median of the integer label map `labels (H, W)`, edges replicated (scipy.ndimage.median_filter with
    size 3 and its default "reflect" mode, whose first sample past the edge is the edge); same dtype."""
    height, width = labels.shape
    rows = torch.arange(-1, height + 1, device=labels.device).clamp(0, height - 1)
    cols = torch.arange(-1, width + 1, device=labels.device).clamp(0, width - 1)
    padded = labels[rows][:, cols]
    window = [padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in OFFSETS]
    return torch.stack(window).median(dim=0).values


def refined_winners(proposals: torch.Tensor, grid: tuple[int, int], scale: int, image: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """int64 `(height, width)` of `size`: the index of the proposal that wins each pixel after PAMR.

    The winners of the `(K, h*w)` `proposals` on the `grid` `(h, w)` are taken on the detail grid, `scale` cells per
    grid cell along each side (`labels.winning_proposals`), as one-hot masks; PAMR refines them on `image`
    `(3, H, W)` (any range) resized bilinearly to that grid; then argmax, 3x3 median (as DiffCut's evaluation does)
    and nearest neighbour to `size`. PAMR's cost grows with the detail grid's cells times K, so the callers choose
    `scale`."""
    detail = (grid[0] * scale, grid[1] * scale)
    winners = winning_proposals(proposals, grid, detail)
    masks = F.one_hot(winners, len(proposals)).permute(2, 0, 1)[None].float()
    colours = F.interpolate(image[None].float().to(proposals.device), size=detail, mode="bilinear",
                            align_corners=False)
    refined = median3x3(pamr(colours, masks)[0].argmax(dim=0))
    return F.interpolate(refined[None, None].float(), size=size, mode="nearest")[0, 0].long()
