"""DiffSeg: zero-shot segmentation from Stable Diffusion self-attention (Tian et al., CVPR 2024).

Public API: `DiffSeg` (the segmenter), `DiffSegConfig` (its settings), `segment_from_attention` (the
post-processing on captured attention), `load_model` and `ModelLoadError`.
"""

from .config import DiffSegConfig
from .model import DEFAULT_MODEL, ModelLoadError, load_model
from .segment import segment_from_attention
from .segmenter import DiffSeg

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "DiffSeg", "DiffSegConfig", "ModelLoadError", "load_model",
           "segment_from_attention", "__version__"]
