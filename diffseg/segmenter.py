"""`DiffSeg`: images in, DiffSeg label maps out, with a Stable Diffusion model held in memory."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import torch

from .attention import SelfAttentionCapture
from .config import DiffSegConfig
from .defaults import DEFAULT_MODEL, MAX_PIXELS
from .model import LoadedModel, load_model
from .preprocess import ImageInput, PreparedImage, prepare
from .segment import segment_from_attention
from .streaming import stream


class DiffSeg:
    """Zero-shot segmentation from the self-attention of a Stable Diffusion UNet (Tian et al., CVPR 2024).

    Per batch of same-size images: VAE posterior mean x scaling factor, one UNet forward at `config.timestep`
    with the empty-prompt context and no noise, capture of the 16 self-attention layers, then aggregation,
    iterative KL merging and per-pixel argmax (`segment_from_attention`).

    Example::

        segmenter = DiffSeg.from_pretrained("CompVis/stable-diffusion-v1-4")
        labels = segmenter.segment(["cat.jpg", "street.png"])  # [(H, W) int64 tensors]
    """

    def __init__(self, model: LoadedModel, config: DiffSegConfig | None = None,
                 max_pixels: int = MAX_PIXELS) -> None:
        """
        Args:
            model: loaded UNet, VAE and context (see `load_model`).
            config: algorithm settings; `DiffSegConfig()` (the paper's) when None.
            max_pixels: images with more pixels are refused before decoding (decompression-bomb guard).
        """
        self.model = model
        self.config = config or DiffSegConfig()
        self.max_pixels = max_pixels
        self.capture = SelfAttentionCapture.of(model.unet)

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, config: DiffSegConfig | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        revision: str | None = None, max_pixels: int = MAX_PIXELS) -> DiffSeg:
        """Load `model` (Hub id, local diffusers folder, or `tiny` / `sd15-random`) and build a segmenter.

        `device` defaults to CUDA when available, else CPU; `dtype` to fp16 on CUDA and fp32 elsewhere.
        Raises `ModelLoadError` with a one-line explanation when the model cannot be found.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        return cls(load_model(model, device=device, dtype=dtype, revision=revision), config, max_pixels)

    @property
    def device(self) -> torch.device:
        return self.model.context.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.context.dtype

    @property
    def info(self) -> dict[str, Any]:
        """Provenance of the model and settings: model identity, config and its hash, device, dtype."""
        return {**self.model.info, "config": self.config.to_dict(), "config_hash": self.config.config_hash(),
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def prepare(self, image: ImageInput, name: str | None = None) -> PreparedImage:
        """Decode and resize one image for this segmenter; raises `ImageError` naming a bad image."""
        return prepare(image, self.config, name=name, max_pixels=self.max_pixels)

    def segment(self, images: Iterable[ImageInput], batch_size: int = 1) -> list[torch.Tensor]:
        """Label maps `(H, W)` int64 (on CPU) for each image, at its original size (crop="none") or
        resolution x resolution (crop="center"). Raises `ImageError` naming the first bad image."""
        return self.segment_prepared([self.prepare(image) for image in images], batch_size)

    def segment_prepared(self, images: Sequence[PreparedImage], batch_size: int = 1) -> list[torch.Tensor]:
        """Like `segment`, for images already prepared: batched by processing size (`stream`), and since they
        are all in memory anyway, no batch runs short before the end."""
        outcomes = stream(enumerate(images), partial(self.segment_batch, batch_size=batch_size), batch_size,
                          window=max(1, len(images)))
        return [outcome.output for outcome in outcomes]

    def segment_batch(self, images: Sequence[PreparedImage], batch_size: int) -> list[torch.Tensor]:
        """Label maps (as `segment`) of 1 to `batch_size` images of one processing size, from one forward (see
        `attention_batch`)."""
        return [segment_from_attention(maps, self.config, image.mask_size).cpu()
                for image, maps in zip(images, self.attention_batch(images, batch_size))]

    def attention_batch(self, images: Sequence[PreparedImage], batch_size: int) -> list[list[torch.Tensor]]:
        """Per image of 1 to `batch_size` images of one processing size, from one forward: its per-resolution
        attention `(h, w, h, w)` (fp32, finest first, on the model's device), ready for
        `segment_from_attention` with any settings.

        The batch is padded to `batch_size` with copies of its last image: every forward then has the same
        shape, so the vendor kernels chosen (and their rounding) are the same, and an image's attention does
        not depend on the other images in its batch. At another row of the batch, or with another
        `batch_size`, some BLAS kernels round differently (a few ulps), which can flip a label only where two
        choices nearly tie.
        """
        padded = [*images, *[images[-1]] * (batch_size - len(images))]
        maps = self.attention(torch.stack([image.pixels for image in padded]))
        return [[m[row] for m in maps] for row in range(len(images))]

    @torch.inference_mode()
    def attention(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Per-resolution self-attention `(B, h, w, h, w)` (fp32, finest first) for pixels `(B, 3, H, W)`
        in [-1, 1], H and W multiples of 64."""
        model = self.model
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        latents = model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor
        context = model.context.expand(len(pixels), -1, -1)
        timestep = torch.full((len(pixels),), self.config.timestep, device=self.device, dtype=torch.long)
        self.capture.reset()
        model.unet(latents, timestep, encoder_hidden_states=context)
        return self.capture.maps(tuple(latents.shape[-2:]))
