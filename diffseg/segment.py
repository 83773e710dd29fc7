"""DiffSeg post-processing: attention maps in, label maps out; with `pamr`, their edges moved onto the image's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .aggregate import aggregate
from .config import DiffSegConfig
from .labels import compact, label_map, label_map_with_margins, proposal_table, winning_proposals
from .merge import merge_batch
from .methods import METHODS
from .pamr import refined_winners
from .refine import refine
from .scores import STABILITY_STEPS, by_label, segment_means, stability

PAMR_SCALE = 2
"""The grid PAMR refines DiffSeg's label maps on (`config.pamr`), in cells per finest attention cell along each side:
128 x 128 at 512 px, a cell per 4 x 4 pixels. The rule: the finest scale at which PAMR costs less than the rest of
the post-processing. Its cost grows with the cells times the segments: on planted photos at 512 px (2-core CPU,
benchmarks/bench_edges.py), PAMR took 0.04 to 0.10 s at 2x and 0.2 to 1.0 s at 4x (DiffCut's scale; as much as
all the rest), against 0.40 to 0.60 s for the post-processing without it."""


def segment_from_attention(
    maps: Sequence[torch.Tensor],
    config: DiffSegConfig | None = None,
    output_size: tuple[int, int] | None = None,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """Segment images from their self-attention, exactly as DiffSeg does after the UNet forward.

    Args:
        maps: one tensor per attention resolution, each `(B, h, w, h, w)` or `(h, w, h, w)`: query dims
            first, averaged over heads and layers, every key map a distribution. Any order; the finest
            grid must be a whole multiple of the others.
        config: algorithm settings (`method`, `kl_threshold`, `num_points`, `weights`, `refine`,
            `num_clusters`, `pamr` are used here); defaults to `DiffSegConfig()`.
        output_size: `(height, width)` of the label maps; default the finest grid upsampled 8x (the
            pixel size of the image the UNet saw).
        images: `(B, 3, H, W)` or `(3, H, W)` pixels of the images (any range), needed by `config.pamr` only.

    Returns:
        labels `(B, height, width)`, or `(height, width)` for unbatched maps; per image 0..K-1, in the smallest
        integer dtype that holds the batch's labels (uint8 up to 256 proposals, see `labels.label_dtype`).
    """
    batched = maps[0].ndim == 5
    if any(m.ndim != (5 if batched else 4) for m in maps):
        raise ValueError("attention maps must all be (B, h, w, h, w) or all (h, w, h, w)")
    per_image = [list(image) for image in zip(*maps)] if batched else [list(maps)]
    if images is not None:
        images = list(images) if images.ndim == 4 else [images]
    grid = _finest(per_image[0])
    size = tuple(output_size) if output_size is not None else (grid[0] * 8, grid[1] * 8)
    labels = segment_images(per_image, config, [size] * len(per_image), images)
    return torch.stack(labels) if batched else labels[0]


def segment_images(images: Sequence[Sequence[torch.Tensor]], config: DiffSegConfig | None,
                   output_sizes: Sequence[tuple[int, int]], pixels: Sequence[torch.Tensor] | None = None
                   ) -> list[torch.Tensor]:
    """`segment_from_attention` for a batch of images of one grid, each with its own output size: per image,
    its per-resolution `(h, w, h, w)` maps (and with `config.pamr` its `(3, H, W)` pixels) in, its label map out (on
    the maps' device, in `label_dtype` of its proposal count).

    The batch goes through each step together, so on a GPU it waits for the device once per merging pass
    rather than once per image and pass, and the label maps are left on the device for the caller to copy.
    """
    config = config or DiffSegConfig()
    _check_pixels(config, pixels)
    grid = _finest(images[0])
    proposals = [sets[0] for sets in _proposals(images, config, grid, with_variants=False)]
    if config.pamr:
        return [compact(refined_winners(p, grid, PAMR_SCALE, image, tuple(size)), len(p))
                for p, image, size in zip(proposals, pixels, output_sizes)]
    return [label_map(p, grid, tuple(size)) for p, size in zip(proposals, output_sizes)]


@dataclass
class Segmentation:
    """One image's label map with the confidence of each of its segments (see `diffseg.scores`)."""

    labels: torch.Tensor
    """`(H, W)` labels 0..K'-1 in `label_dtype` (as `segment_images` gives them)."""
    score: torch.Tensor
    """fp32 `(K,)`, K >= K' the proposal count: entry `l` is label l's score; entries past K'-1 are 0."""
    stability: torch.Tensor
    """fp32 `(K,)`, indexed by label as `score`."""
    descriptors: torch.Tensor | None = None
    """float16 `(K', C)`: row l is label l's descriptor (`diffseg.descriptors`); None unless asked for."""
    warning: str | None = None
    """Why the label map may be coarser than the settings ask for (a cut that stopped at its work bound); None
    normally."""

    def cpu(self) -> Segmentation:
        descriptors = None if self.descriptors is None else self.descriptors.cpu()
        return Segmentation(self.labels.cpu(), self.score.cpu(), self.stability.cpu(), descriptors, self.warning)


def segment_images_scored(images: Sequence[Sequence[torch.Tensor]], config: DiffSegConfig | None,
                          output_sizes: Sequence[tuple[int, int]], pixels: Sequence[torch.Tensor] | None = None
                          ) -> list[Segmentation]:
    """`segment_images` with each segment's `score` and `stability` (`diffseg.scores`): the same label maps, plus
    two more merges with moved thresholds (sharing the anchors' distances) and three label maps at the processing
    size. With `config.pamr` the margins and the stability's label maps are those before PAMR, as DiffCut's."""
    config = config or DiffSegConfig()
    _check_pixels(config, pixels)
    grid = _finest(images[0])
    processing = (grid[0] * 8, grid[1] * 8)
    results = []
    for index, (sets, size) in enumerate(zip(_proposals(images, config, grid, with_variants=True), output_sizes)):
        labels, margins, table = label_map_with_margins(sets[0], grid, tuple(size))
        count = len(sets[0])
        if config.pamr:
            winners = refined_winners(sets[0], grid, PAMR_SCALE, pixels[index], tuple(size))
            table = proposal_table(winners, count)
            labels = table.to(labels.dtype)[winners]
        # Stability compares label maps at the processing size (the UNet's input), whatever the mask's size: the
        # same segments, at a cost that does not grow with the photo. Computed per proposal, then given to labels.
        variants = [(winning_proposals(p, grid, processing), len(p)) for p in sets[1:]]
        per_proposal = stability(winning_proposals(sets[0], grid, processing), count, variants)
        results.append(Segmentation(labels, segment_means(labels, margins, count), by_label(per_proposal, table)))
    return results


def labels(evidence: Sequence[Sequence[torch.Tensor]], config: DiffSegConfig, sizes: Sequence[tuple[int, int]],
           pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`methods.PostProcessing.labels` of the attention methods: `segment_images` (the pixels for `pamr` only)."""
    return segment_images(evidence, config, sizes, pixels)


def scored(evidence: Sequence[Sequence[torch.Tensor]], config: DiffSegConfig, sizes: Sequence[tuple[int, int]],
           pixels: Sequence[torch.Tensor]) -> list[Segmentation]:
    """`methods.PostProcessing.scored` of the attention methods: `segment_images_scored` (the pixels for `pamr`
    only)."""
    return segment_images_scored(evidence, config, sizes, pixels)


def proposals(attentions: Sequence[torch.Tensor], config: DiffSegConfig, grid: tuple[int, int],
              with_variants: bool) -> list[list[torch.Tensor]]:
    """DiffSeg's proposals `(K, N)` per image of aggregated attention `(N, N)` (N cells of the finest `grid`): the
    merged anchors, refined with `config.refine`; then with `with_variants` those of the thresholds `stability`
    compares with."""
    threshold_sets = [config.thresholds]
    if with_variants:
        threshold_sets += [[t * step for t in config.thresholds] for step in STABILITY_STEPS]
    merged = merge_batch(attentions, grid, config.num_points, threshold_sets)
    if config.refine:
        merged = [[refine(attention, p) for p in sets] for attention, sets in zip(attentions, merged)]
    return merged


def _proposals(images: Sequence[Sequence[torch.Tensor]], config: DiffSegConfig, grid: tuple[int, int],
               with_variants: bool) -> list[list[torch.Tensor]]:
    """Per image, its proposals, then with `with_variants` those of the settings `stability` compares with, by the
    `proposals` of the config's method's module (this one's, or `baselines.proposals`)."""
    attentions = [aggregate(maps, config.weights) for maps in images]
    return METHODS[config.method].post_processing().proposals(attentions, config, grid, with_variants)


def _check_pixels(config: DiffSegConfig, pixels: Sequence[torch.Tensor] | None) -> None:
    """Refuse `config.pamr` without the images' pixels (`ValueError`)."""
    if config.pamr and pixels is None:
        raise ValueError("pamr refines on the images' colours: pass their pixels")


def _finest(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The finest query grid `(H, W)` among one image's `(h, w, h, w)` maps."""
    return max((tuple(m.shape[:2]) for m in maps), key=lambda g: g[0] * g[1])
