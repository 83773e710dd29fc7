"""Algorithm settings of DiffSeg and DiffCut, with the published defaults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .methods import METHODS, spoken, unused_fields

CROP_MODES = ("none", "center")


@dataclass(frozen=True)
class DiffSegConfig:
    """Every setting that changes the masks DiffSeg or DiffCut produces.

    Two configs that compare equal give the same masks for the same model and image; `config_hash`
    identifies a config in provenance records.
    """

    kl_threshold: float | tuple[float, ...] = 1.1
    """Merge threshold tau on the symmetric KL distance, one per merging pass. A single float means three
    passes with that threshold (the paper's setting). The paper uses 1.1 for COCO-Stuff-27 and 0.9 for
    Cityscapes; larger values merge more, giving fewer and larger segments."""

    num_points: int = 16
    """Side M of the anchor grid on the finest (64x64 at 512 px) attention grid: M x M anchors for a square
    image, the same spacing along the shorter side of an oblong one. More anchors can find smaller objects."""

    timestep: int | None = None
    """Diffusion timestep, 0..999; None: the method's (`methods.METHODS`). DiffSeg: 300, whose embedding
    conditions the UNet while the latent itself gets no noise. DiffCut: 50, the latent noised to that step with
    one fixed noise shared by every image (seed 42)."""

    resolution: int | None = None
    """Processing size in pixels of the longer image side, a multiple of 64; None: the method's (DiffSeg 512,
    DiffCut 1024). DiffSeg's finest attention grid is resolution / 8 cells along that side; DiffCut's features
    are resolution / 32 tokens along it."""

    crop: str = "none"
    """"none": the whole image, aspect kept, mask at the original size. "center": the paper's protocol, a
    center square resized to resolution x resolution, mask of that size (DiffSeg: side min(H, W); DiffCut: side
    min(H, W) - 1, as its official code crops)."""

    weights: tuple[float, ...] | None = None
    """Aggregation weight of each attention resolution, finest first; normalized to sum 1. None gives the
    paper's weights, proportional to the grid side (64, 32, 16, 8) / 120."""

    refine: bool = False
    """K-Means refinement of the merged proposals (as in the official demo; off for the paper's numbers)."""

    method: str = "diffseg"
    """"diffseg": DiffSeg (Tian et al., CVPR 2024), anchors and iterative KL merging of the aggregated
    self-attention (uses `kl_threshold`, `num_points`, `weights`, `refine`). "kmeans-c": the DiffSeg paper's
    K-Means-C baseline, K-Means of the attention maps into `num_clusters` clusters (k-means++, fixed seed).
    "diffcut": DiffCut (Couairon et al., NeurIPS 2024), recursive normalized cut of one self-attention layer's
    output features (uses `ncut_threshold`, `alpha`, `pamr`). "kway": DiffCut's features and affinity, segmented by a
    K-way normalized cut descent (`diffseg.kway`, after Falcon, ICLR 2026) started from DiffCut's cut of the tokens
    pooled to 32 x 32 at most (same settings)."""

    num_clusters: int = 6
    """K of the "kmeans-c" method (the paper's K-Means-C uses 6); unused by the others."""

    ncut_threshold: float = 0.5
    """DiffCut's tau (kway's too, through the cut that starts its descent): a bipartition is kept, and both halves
    cut further, while its normalized cut value is below tau (in (0, 2]: an NCut value is at most 2). Larger
    values cut more, giving more and smaller segments. The paper uses 0.5."""

    alpha: float = 10.0
    """DiffCut's affinity exponent: the min-max normalized cosine affinity of two tokens is raised to this power
    (> 0), which keeps only strong affinities. The paper uses 10."""

    pamr: bool = False
    """DiffSeg, DiffCut and kway: refine the label map with PAMR (pixel-adaptive mask refinement on the image's
    colours, 10 iterations, dilations 1, 2, 4, 8, then a 3x3 median; `pamr.refined_winners`) so that its edges follow
    the photo's. DiffCut and kway refine at 4x the feature grid (128 x 128 at 1024 px), as the paper's best results
    do; DiffSeg at 2x its finest attention grid (128 x 128 at 512 px, `segment.PAMR_SCALE`), where PAMR costs less
    than the rest of its post-processing. DiffSeg's configs describe `pamr` only when it is on, so that those
    without it keep the hashes they had before (`methods.Method.later_fields`)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        for key in ("timestep", "resolution"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, getattr(METHODS[self.method], key))
        taus = self.kl_threshold
        if isinstance(taus, Sequence) and not isinstance(taus, str):
            taus = tuple(float(t) for t in taus)
        else:
            taus = float(taus)
        object.__setattr__(self, "kl_threshold", taus)
        if not self.thresholds or any(not t > 0 for t in self.thresholds):
            raise ValueError(f"kl_threshold must be positive (one value per pass), got {self.kl_threshold!r}")
        if self.num_points < 2:
            raise ValueError(f"num_points must be at least 2, got {self.num_points}")
        if not 0 <= self.timestep <= 999:
            raise ValueError(f"timestep must be in 0..999, got {self.timestep}")
        if self.resolution < 64 or self.resolution % 64:
            raise ValueError(f"resolution must be a positive multiple of 64, got {self.resolution}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be at least 1, got {self.num_clusters}")
        if not 0 < self.ncut_threshold <= 2:
            raise ValueError(f"ncut_threshold must be in (0, 2], got {self.ncut_threshold}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        for flag in {flag for method in METHODS.values() for flag in method.flags}:
            if getattr(self, flag) and flag not in METHODS[self.method].flags:
                owners = [method.name for method in METHODS.values() if flag in method.flags]
                raise ValueError(f"{flag} applies to the {spoken(owners, 'and')} method{'s' * (len(owners) > 1)} only")
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights!r}")
            object.__setattr__(self, "weights", weights)

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The threshold of each merging pass (the number of passes is its length)."""
        if isinstance(self.kl_threshold, tuple):
            return self.kl_threshold
        return (self.kl_threshold,) * 3

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable form (tuples as lists) of the settings that apply to the method (see
        `methods.unused_fields`), less the method's `later_fields` that are at their default."""
        method = METHODS[self.method]
        unused = unused_fields(method)
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()
                if key not in unused and not (key in method.later_fields and value == defaults[key])}

    def config_hash(self) -> str:
        """Short stable hash of the settings, for provenance and output separation."""
        canonical = self.to_dict()
        if "kl_threshold" in canonical:
            canonical["kl_threshold"] = list(self.thresholds)
        blob = json.dumps(canonical, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
