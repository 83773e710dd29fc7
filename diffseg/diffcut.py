"""DiffCut post-processing (Couairon et al., NeurIPS 2024): one layer's features in, label maps out.

Per image: a recursive normalized cut of the token affinity gives segments on the token grid (`ncut`; or, for the
"kway" method, the K-way NCut descent, `kway`); each
segment becomes a concept, the mean of its tokens' L2-normalized features; every pixel then takes the concept its
feature is most similar to, with the similarities computed on the token grid and upsampled bilinearly to the
output size (the same as upsampling the features first, since both steps are linear, for a fraction of the cost).
Optionally PAMR refines that map on the image's colours (`pamr`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import kway, ncut
from .config import DiffSegConfig
from .labels import compact, label_map, label_map_with_margins, proposal_table, winning_proposals
from .pamr import refined_winners
from .scores import STABILITY_STEPS, by_label, segment_means, stability
from .segment import Segmentation

PIXELS_PER_TOKEN = 32
"""Pixels per token along each side: the feature layer sits 4 downsamplings below the latent, itself 8x below
the pixels. The default output size of `segment_from_features` is the token grid times this."""
DETAIL_SCALE = 4
"""The grid PAMR refines on and `stability` compares label maps on, in cells per token along each side: 128 x
128 at 1024 px, where the paper evaluates and refines."""
WORK_BOUND = ("the cut stopped at its work bound, leaving fewer segments than --ncut-threshold asks for (features "
              "with little structure, such as noise)")
"""`Segmentation.warning` of an image whose cut stopped at its bound (`ncut.MAX_WORK`, `kway.MAX_STEPS`)."""


def segment_from_features(features: torch.Tensor, config: DiffSegConfig | None = None,
                          output_size: tuple[int, int] | None = None, images: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """Segment images from one layer's features, exactly as DiffCut does after the UNet forward.

    Args:
        features: `(B, h, w, C)` or `(h, w, C)`: the layer's output per token (any float dtype; computed in fp32).
        config: settings (`ncut_threshold`, `alpha`, `pamr` are used here); defaults to
            `DiffSegConfig(method="diffcut")`.
        output_size: `(height, width)` of the label maps; default the token grid times `PIXELS_PER_TOKEN` (the
            pixel size of the image the UNet saw).
        images: `(B, 3, H, W)` or `(3, H, W)` pixels of the images (any range), needed by `config.pamr` only.

    Returns:
        labels `(B, height, width)`, or `(height, width)` for unbatched features; per image 0..K-1, in the
        smallest integer dtype that holds them (uint8 up to 256 segments, see `labels.label_dtype`).
    """
    config = config or DiffSegConfig(method="diffcut")
    batched = features.ndim == 4
    if features.ndim not in (3, 4):
        raise ValueError(f"features must be (B, h, w, C) or (h, w, C), got shape {tuple(features.shape)}")
    if config.pamr and images is None:
        raise ValueError("pamr refines on the images' colours: pass `images`")
    features = features if batched else features[None]
    if images is not None:
        images = images if images.ndim == 4 else images[None]
    grid = tuple(features.shape[1:3])
    size = tuple(output_size) if output_size is not None else (grid[0] * PIXELS_PER_TOKEN, grid[1] * PIXELS_PER_TOKEN)
    labels = segment_features(list(features), config, [size] * len(features),
                              list(images) if images is not None else None)
    return torch.stack(labels) if batched else labels[0]


def segment_features(features: Sequence[torch.Tensor], config: DiffSegConfig,
                     output_sizes: Sequence[tuple[int, int]], images: Sequence[torch.Tensor] | None = None
                     ) -> list[torch.Tensor]:
    """`segment_from_features` for a batch, each image with its own output size: per image its `(h, w, C)`
    features (and with `config.pamr` its `(3, H, W)` pixels) in, its label map out, on the features' device."""
    results = []
    features = [normalized(tokens) for tokens in features]
    cuts = token_labels(features, config, [config.ncut_threshold])
    for index, (tokens, size, (cut,)) in enumerate(zip(features, output_sizes, cuts)):
        similarity, grid = concept_similarity(tokens, cut.labels)
        if config.pamr:
            results.append(compact(refined_winners(similarity, grid, DETAIL_SCALE, images[index], tuple(size)),
                                   len(similarity)))
        else:
            results.append(label_map(similarity, grid, tuple(size)))
    return results


def segment_features_scored(features: Sequence[torch.Tensor], config: DiffSegConfig,
                            output_sizes: Sequence[tuple[int, int]], images: Sequence[torch.Tensor] | None = None
                            ) -> list[Segmentation]:
    """`segment_features` with each segment's `score` and `stability` (`diffseg.scores`): the score is the mean
    margin by which the segment's concept wins its pixels' similarity; the stability compares, on the
    `DETAIL_SCALE` grid, the label maps of the cut thresholds x0.9 and x1.1. All three token label maps come from
    one recursive cut at the largest threshold (`ncut.segment_tokens_multi`), exactly as three cuts would give,
    unless it stopped at its work bound: then the image's three maps are the segments it found so far, and its
    `warning` says so (`WORK_BOUND`)."""
    results = []
    features = [normalized(tokens) for tokens in features]
    cuts = token_labels(features, config, [config.ncut_threshold * step for step in (1.0, *STABILITY_STEPS)])
    for index, (tokens, size, per_tau) in enumerate(zip(features, output_sizes, cuts)):
        size = tuple(size)
        (similarity, grid), *moved = [concept_similarity(tokens, cut.labels) for cut in per_tau]
        count = len(similarity)
        labels, margins, table = label_map_with_margins(similarity, grid, size)
        if config.pamr:
            winners = refined_winners(similarity, grid, DETAIL_SCALE, images[index], size)
            table = proposal_table(winners, count)
            labels = table.to(labels.dtype)[winners]
        detail = (grid[0] * DETAIL_SCALE, grid[1] * DETAIL_SCALE)
        variants = [(winning_proposals(s, grid, detail), len(s)) for s, _ in moved]
        per_concept = stability(winning_proposals(similarity, grid, detail), count, variants)
        results.append(Segmentation(labels, segment_means(labels, margins, count), by_label(per_concept, table),
                                    warning=None if per_tau[0].complete else WORK_BOUND))
    return results


def labels(evidence: Sequence[torch.Tensor], config: DiffSegConfig, sizes: Sequence[tuple[int, int]],
           pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`methods.PostProcessing.labels` of DiffCut: `segment_features`."""
    return segment_features(evidence, config, sizes, pixels)


def scored(evidence: Sequence[torch.Tensor], config: DiffSegConfig, sizes: Sequence[tuple[int, int]],
           pixels: Sequence[torch.Tensor]) -> list[Segmentation]:
    """`methods.PostProcessing.scored` of DiffCut: `segment_features_scored`."""
    return segment_features_scored(evidence, config, sizes, pixels)


def token_labels(tokens: Sequence[torch.Tensor], config: DiffSegConfig, taus: Sequence[float]
                 ) -> list[list[ncut.Cut]]:
    """Per image of L2-normalized `(h, w, C)` tokens, its int64 `(h, w)` token segments at each of `taus`, each with
    whether its cut ended within its work bound: by DiffCut's recursive cut (`ncut`), or for the "kway" method by
    the K-way NCut descent (`kway`) on the same affinity, the images of a batch together."""
    if config.method == "kway":
        return kway.segment_tokens_multi(tokens, taus, config.alpha)
    return [ncut.segment_tokens_multi(image, taus, config.alpha) for image in tokens]


def normalized(features: torch.Tensor) -> torch.Tensor:
    """fp32 `(h, w, C)`: each token's feature divided by its L2 norm. The cut gets these, as the official pipeline
    gives its cut (which normalizes once more), so that the affinity rounds as there."""
    return F.normalize(features.float(), dim=-1)


def concept_similarity(tokens: torch.Tensor, token_labels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """fp32 `(K, h*w)`: the similarity of every token to each segment's concept (the mean of its tokens, not
    renormalized, as in the paper), for L2-normalized tokens `(h, w, C)` and int64 token labels `(h, w)` 0..K-1;
    and the grid `(h, w)`."""
    grid = tuple(tokens.shape[:2])
    tokens = tokens.reshape(-1, tokens.shape[-1])
    members = F.one_hot(token_labels.reshape(-1), int(token_labels.max()) + 1).T.float()
    concepts = (members / members.sum(dim=1, keepdim=True)) @ tokens
    return concepts @ tokens.T, grid
