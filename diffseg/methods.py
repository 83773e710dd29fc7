"""The segmentation methods, one registered object each: everything the rest of the code looks up about a method.

A method is a `Method` in `METHODS`: its settings and defaults, what its UNet forward captures, the module of its
post-processing (`PostProcessing`), its center-crop rule, its device memory per image, and its evaluation variants.
A new method is its post-processing module plus one entry here. Importing this module does not import torch (the
command lines' `--help` reads the table), so post-processing modules are imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from .config import DiffSegConfig
    from .segment import Segmentation

Capture = Literal["attention", "features"]
"""What a method's forward keeps: "attention", every self-attention layer's maps, head- and layer-averaged per
resolution; "features", the output of one self-attention module (`features.feature_layer`), the UNet stopped there."""


class PostProcessing(Protocol):
    """What a method's post-processing module provides: per image its forward's evidence (per-resolution attention
    `(h, w, h, w)` or features `(h, w, C)`, as its `Capture` says), the `(height, width)` of its label map and its
    `(3, H, W)` pixels in [-1, 1] (the attention methods look at them for `pamr` only) in; out, label maps
    `(height, width)` 0..K-1 on the evidence's device (`labels`), or the same with each segment's score and
    stability (`scored`)."""

    def labels(self, evidence: Sequence[Any], config: DiffSegConfig, sizes: Sequence[tuple[int, int]],
               pixels: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...

    def scored(self, evidence: Sequence[Any], config: DiffSegConfig, sizes: Sequence[tuple[int, int]],
               pixels: Sequence[torch.Tensor]) -> list[Segmentation]: ...


@dataclass(frozen=True)
class EvaluationVariant:
    """A way `pipeline.evaluation` scores a method, named on the command line (`jobs/evaluate.py --method`)."""

    name: str
    settings: Callable[[DiffSegConfig], str]
    """The settings part of a scored run's name (`diffseg tau=1.1`: "tau=1.1"), from its config."""
    clusters_from_labels: bool = False
    """K is the number of classes in each image's ground truth (K-Means-S), which only evaluation knows."""


@dataclass(frozen=True)
class Method:
    """One segmentation method: what `DiffSegConfig`, `DiffSeg`, preprocessing and evaluation look up about it."""

    name: str
    """`DiffSegConfig.method` and the `--method` choice."""
    paper: str
    summary: str
    """Its phrase in the `--method` help."""
    capture: Capture
    timestep: int
    """Diffusion timestep of its paper, a config's default."""
    resolution: int
    """Processing size in pixels of the longer side in its paper, a config's default."""
    fields: tuple[str, ...]
    """The `DiffSegConfig` fields of its own that its masks depend on, in its `to_dict` and hash; the other methods'
    fields are left out (so a config's hash does not change when a method with new settings is added)."""
    flags: tuple[str, ...]
    """Boolean `DiffSegConfig` fields that only this method may set."""
    center_square: Callable[[int, int], tuple[int, int, int]]
    """`(left, top, side)` of its center crop (`crop="center"`) of a `width x height` image."""
    unet_memory: int
    """Bytes of device memory one image of a batch may need at its model family's native size
    (`segmenter.NATIVE_RESOLUTION`: the same token grids), besides its VAE encoding, with room to spare."""
    post_processing_module: str
    """The module that implements `PostProcessing` for it."""
    variants: tuple[EvaluationVariant, ...]
    threshold: str | None
    """The config field a threshold sweep moves (`jobs/evaluate.py --sweep`); None: it has none."""
    later_fields: tuple[str, ...] = ()
    """Those of its `fields` added after its first outputs were written: in its `to_dict` and hash only when they
    differ from their `DiffSegConfig` default, so that outputs made without them keep their hashes, and outputs
    made with them get new ones."""

    def post_processing(self) -> PostProcessing:
        """Its post-processing module, imported now (it imports torch)."""
        return importlib.import_module(self.post_processing_module)  # type: ignore[return-value]


def largest_square(width: int, height: int) -> tuple[int, int, int]:
    """DiffSeg's official crop: the largest central square, offsets rounded down."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def torchvision_square(width: int, height: int) -> tuple[int, int, int]:
    """DiffCut's official crop: side min(width, height) - 1, offsets rounded half to even (torchvision's
    `CenterCrop`)."""
    side = max(1, min(width, height) - 1)
    return round((width - side) / 2), round((height - side) / 2), side


def _merge_thresholds(config: DiffSegConfig) -> str:
    taus = config.thresholds[:1] if len(set(config.thresholds)) == 1 else config.thresholds
    return "tau=" + ",".join(f"{tau:g}" for tau in taus) + (" pamr" if config.pamr else "")


def _cut_threshold(config: DiffSegConfig) -> str:
    return f"tau={config.ncut_threshold:g}" + (" pamr" if config.pamr else "")


ATTENTION_FIELDS = ("kl_threshold", "num_points", "weights", "refine", "num_clusters")
"""The fields of the attention methods. K-Means-C reads only `weights` and `num_clusters`, but its configs' hashes
have always covered all of these, as DiffSeg's do."""

METHODS: dict[str, Method] = {method.name: method for method in (
    Method(name="diffseg", paper="Tian et al., CVPR 2024", summary="DiffSeg, CVPR 2024", capture="attention",
           timestep=300, resolution=512, fields=(*ATTENTION_FIELDS, "pamr"), flags=("refine", "pamr"),
           center_square=largest_square,
           # The UNet's activations, the captured maps (68 MiB fp32), a share of the capture's chunks and the
           # post-processing (2 x 64 MiB); the GPU check prints the peak at batch 8 (benchmarks/README.md).
           unet_memory=2 * 2**30, post_processing_module="diffseg.segment",
           variants=(EvaluationVariant("diffseg", _merge_thresholds),), threshold="kl_threshold",
           later_fields=("pamr",)),
    Method(name="kmeans-c", paper="Tian et al., CVPR 2024 (its K-Means-C baseline)",
           summary="its K-Means baseline on the same attention", capture="attention", timestep=300, resolution=512,
           fields=ATTENTION_FIELDS, flags=(), center_square=largest_square, unet_memory=2 * 2**30,
           post_processing_module="diffseg.baselines",
           variants=(EvaluationVariant("kmeans-c", lambda config: f"K={config.num_clusters}"),
                     EvaluationVariant("kmeans-s", lambda config: "", clusters_from_labels=True)), threshold=None),
    Method(name="diffcut", paper="Couairon et al., NeurIPS 2024",
           summary="DiffCut, NeurIPS 2024: stronger, best with an SDXL-family model such as segmind/SSD-1B",
           capture="features", timestep=50, resolution=1024, fields=("ncut_threshold", "alpha", "pamr"),
           flags=("pamr",), center_square=torchvision_square,
           # Activations down to its feature layer only, and 32 x 32 tokens of 1280 features.
           unet_memory=2**28, post_processing_module="diffseg.diffcut",
           variants=(EvaluationVariant("diffcut", _cut_threshold),), threshold="ncut_threshold"),
    Method(name="kway", paper="after Falcon, ICLR 2026, on DiffCut's features",
           summary="DiffCut's features cut by a K-way normalized cut descent: a lower NCut than DiffCut's recursion "
                   "and several times faster at 64 x 64 tokens",
           capture="features", timestep=50, resolution=1024, fields=("ncut_threshold", "alpha", "pamr"),
           flags=("pamr",), center_square=torchvision_square,
           # DiffCut's, plus the batch's affinities: 64 MiB per image at 64 x 64 tokens, 4 MiB at 32 x 32.
           unet_memory=2**28 + 2**26, post_processing_module="diffseg.diffcut",
           variants=(EvaluationVariant("kway", _cut_threshold),), threshold="ncut_threshold"),
)}
"""Every method, by name; the first is the default (`DiffSegConfig.method`)."""


def unused_fields(method: Method) -> frozenset[str]:
    """The other methods' fields that `method` does not read: left out of its configs' `to_dict` and hash, since
    they cannot change its masks (so DiffSeg's hashes are those from before DiffCut existed; its own fields added
    later are left out while at their default, see `Method.later_fields`)."""
    return frozenset(field for other in METHODS.values() for field in other.fields) - set(method.fields)


def variant_method(name: str) -> tuple[Method, EvaluationVariant]:
    """The method an evaluation variant belongs to, and the variant; raises `KeyError` for an unknown name."""
    for method in METHODS.values():
        for variant in method.variants:
            if variant.name == name:
                return method, variant
    raise KeyError(name)


def spoken(names: Sequence[str], conjunction: str) -> str:
    """`a, b or c` (with conjunction "or")."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {conjunction} {names[-1]}"
