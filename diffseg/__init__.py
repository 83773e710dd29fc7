"""DiffSeg: zero-shot segmentation from Stable Diffusion self-attention (Tian et al., CVPR 2024), and DiffCut
(Couairon et al., NeurIPS 2024) from the same models' features.

Public API: `DiffSeg` (the segmenter, either method), `DiffSegConfig` (its settings), `segment_from_attention`
(DiffSeg's post-processing on captured attention), `segment_from_features` (DiffCut's on one layer's features),
`stream` (segmenting a stream of images in order, batched) and its
`Outcome`, `ImageError` (an image that cannot be used), `load_model` and `ModelLoadError`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {"DEFAULT_MODEL": ".defaults", "DiffSeg": ".segmenter", "DiffSegConfig": ".config",
           "ImageError": ".preprocess", "ModelLoadError": ".model", "Outcome": ".streaming",
           "load_model": ".model", "segment_from_attention": ".segment",
           "segment_from_features": ".diffcut", "stream": ".streaming"}
"""Where each public name lives. They are imported on first use, so that light modules (`diffseg.arguments`,
`diffseg.defaults`) and the command lines' `--help` do not pay for importing torch."""

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'diffseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value
