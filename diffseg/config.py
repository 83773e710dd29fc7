"""Algorithm settings of DiffSeg, with the published defaults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CROP_MODES = ("none", "center")
METHODS = ("diffseg", "kmeans-c")


@dataclass(frozen=True)
class DiffSegConfig:
    """Every setting that changes the masks DiffSeg produces.

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

    timestep: int = 300
    """Diffusion timestep whose embedding conditions the UNet (the latent itself gets no noise). 0..999."""

    resolution: int = 512
    """Processing size in pixels of the longer image side (a multiple of 64). The finest attention grid is
    resolution / 8 cells along that side."""

    crop: str = "none"
    """"none": the whole image, aspect kept, mask at the original size. "center": the paper's protocol, a
    center square resized to resolution x resolution, mask of that size."""

    weights: tuple[float, ...] | None = None
    """Aggregation weight of each attention resolution, finest first; normalized to sum 1. None gives the
    paper's weights, proportional to the grid side (64, 32, 16, 8) / 120."""

    refine: bool = False
    """K-Means refinement of the merged proposals (as in the official demo; off for the paper's numbers)."""

    method: str = "diffseg"
    """How segments are formed from the aggregated attention. "diffseg": anchors and iterative KL merging (the
    paper's method; uses `kl_threshold`, `num_points`, `refine`). "kmeans-c": the paper's K-Means-C baseline,
    K-Means of the attention maps into `num_clusters` clusters (k-means++ seeded with a fixed seed)."""

    num_clusters: int = 6
    """K of the "kmeans-c" method (the paper's K-Means-C uses 6); unused by "diffseg"."""

    def __post_init__(self) -> None:
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
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be at least 1, got {self.num_clusters}")
        if self.refine and self.method != "diffseg":
            raise ValueError("refine applies to the diffseg method only")
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
        """Plain JSON-serializable form (tuples as lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def config_hash(self) -> str:
        """Short stable hash of the settings, for provenance and output separation."""
        canonical = dict(self.to_dict(), kl_threshold=list(self.thresholds))
        blob = json.dumps(canonical, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
