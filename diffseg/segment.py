"""DiffSeg post-processing: attention maps in, label maps out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .aggregate import aggregate
from .baselines import kmeans_proposals
from .config import DiffSegConfig
from .labels import label_map
from .merge import merge_batch
from .refine import refine


def segment_from_attention(
    maps: Sequence[torch.Tensor],
    config: DiffSegConfig | None = None,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Segment images from their self-attention, exactly as DiffSeg does after the UNet forward.

    Args:
        maps: one tensor per attention resolution, each `(B, h, w, h, w)` or `(h, w, h, w)`: query dims
            first, averaged over heads and layers, every key map a distribution. Any order; the finest
            grid must be a whole multiple of the others.
        config: algorithm settings (`method`, `kl_threshold`, `num_points`, `weights`, `refine`,
            `num_clusters` are used here); defaults to `DiffSegConfig()`.
        output_size: `(height, width)` of the label maps; default the finest grid upsampled 8x (the
            pixel size of the image the UNet saw).

    Returns:
        labels `(B, height, width)`, or `(height, width)` for unbatched maps; per image 0..K-1, in the smallest
        integer dtype that holds the batch's labels (uint8 up to 256 proposals, see `labels.label_dtype`).
    """
    batched = maps[0].ndim == 5
    if any(m.ndim != (5 if batched else 4) for m in maps):
        raise ValueError("attention maps must all be (B, h, w, h, w) or all (h, w, h, w)")
    images = [list(image) for image in zip(*maps)] if batched else [list(maps)]
    grid = _finest(images[0])
    size = tuple(output_size) if output_size is not None else (grid[0] * 8, grid[1] * 8)
    labels = segment_images(images, config, [size] * len(images))
    return torch.stack(labels) if batched else labels[0]


def segment_images(images: Sequence[Sequence[torch.Tensor]], config: DiffSegConfig | None,
                   output_sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """`segment_from_attention` for a batch of images of one grid, each with its own output size: per image,
    its per-resolution `(h, w, h, w)` maps in, its label map out (on the maps' device, in `label_dtype` of its
    proposal count).

    The batch goes through each step together, so on a GPU it waits for the device once per merging pass
    rather than once per image and pass, and the label maps are left on the device for the caller to copy.
    """
    config = config or DiffSegConfig()
    grid = _finest(images[0])
    attentions = [aggregate(maps, config.weights) for maps in images]
    if config.method == "kmeans-c":
        proposals = [kmeans_proposals(attention, config.num_clusters) for attention in attentions]
    else:
        proposals = merge_batch(attentions, grid, config.num_points, config.thresholds)
        if config.refine:
            proposals = [refine(attention, p) for attention, p in zip(attentions, proposals)]
    del attentions
    return [label_map(p, grid, tuple(size)) for p, size in zip(proposals, output_sizes)]


def _finest(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The finest query grid `(H, W)` among one image's `(h, w, h, w)` maps."""
    return max((tuple(m.shape[:2]) for m in maps), key=lambda g: g[0] * g[1])
