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
from .segment import Segmentation, segment_images, segment_images_scored
from .streaming import stream

GPU_BATCH_SIZE = 8
"""Images per forward on a GPU by default: enough to fill a data-center GPU at 512 px (benchmarks/README.md)."""
GPU_MEMORY_PER_IMAGE = 2 * 2**30
"""Bytes of device memory one image of a batch may need at 512 px, with room to spare: its activations, its
captured maps (68 MiB fp32), its share of the capture's chunks and its post-processing (2 x 64 MiB)."""


class DiffSeg:
    """Zero-shot segmentation from the self-attention of a Stable Diffusion UNet (Tian et al., CVPR 2024).

    Per batch of same-size images: VAE posterior mean x scaling factor, one UNet forward at `config.timestep`
    with the empty-prompt context and no noise, capture of the 16 self-attention layers, then aggregation,
    iterative KL merging and per-pixel argmax (`segment_images`).

    Example::

        segmenter = DiffSeg.from_pretrained("CompVis/stable-diffusion-v1-4")
        labels = segmenter.segment(["cat.jpg", "street.png"])  # [(H, W) uint8 tensors]
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
    def default_batch_size(self) -> int:
        """Images per forward when none is asked for: 1 on CPU, where a batch only adds latency; on a GPU
        `GPU_BATCH_SIZE`, or as many as `GPU_MEMORY_PER_IMAGE` each fit in the device memory that is free."""
        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, min(GPU_BATCH_SIZE, int(free // GPU_MEMORY_PER_IMAGE)))

    @property
    def info(self) -> dict[str, Any]:
        """Provenance of the model and settings: model identity, config and its hash, device, dtype."""
        return {**self.model.info, "config": self.config.to_dict(), "config_hash": self.config.config_hash(),
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def prepare(self, image: ImageInput, name: str | None = None) -> PreparedImage:
        """Decode and resize one image for this segmenter; raises `ImageError` naming a bad image."""
        return prepare(image, self.config, name=name, max_pixels=self.max_pixels)

    def segment(self, images: Iterable[ImageInput], batch_size: int = 1) -> list[torch.Tensor]:
        """Label maps `(H, W)` (on CPU; uint8 up to 256 proposals, see `labels.label_dtype`) for each image, at its
        original size (crop="none") or resolution x resolution (crop="center"). Raises `ImageError` naming the
        first bad image."""
        return self.segment_prepared([self.prepare(image) for image in images], batch_size)

    def segment_prepared(self, images: Sequence[PreparedImage], batch_size: int = 1) -> list[torch.Tensor]:
        """Like `segment`, for images already prepared: batched by processing size (`stream`), and since they
        are all in memory anyway, no batch runs short before the end."""
        outcomes = stream(enumerate(images), partial(self.segment_batch, batch_size=batch_size), batch_size,
                          window=max(1, len(images)))
        return [outcome.output for outcome in outcomes]

    def segment_batch(self, images: Sequence[PreparedImage], batch_size: int) -> list[torch.Tensor]:
        """Label maps (as `segment`) of 1 to `batch_size` images of one processing size, from one forward (see
        `attention_batch`), post-processed together on the model's device (`label_batch`)."""
        return self.label_batch(images, self.attention_batch(images, batch_size))

    def label_batch(self, images: Sequence[PreparedImage], maps: Sequence[Sequence[torch.Tensor]]
                    ) -> list[torch.Tensor]:
        """The label maps (as `segment`, on CPU) of `images` from their `attention_batch` maps, post-processed
        together on the maps' device (`segment_images`). Separate from the forward so that a GPU can run one
        batch's post-processing while it runs the next batch's forward (see `overlap.Overlapped`)."""
        labels = segment_images(maps, self.config, [image.mask_size for image in images])
        return [label.cpu() for label in labels]

    def label_batch_scored(self, images: Sequence[PreparedImage], maps: Sequence[Sequence[torch.Tensor]]
                           ) -> list[Segmentation]:
        """`label_batch` with each segment's `score` and `stability` (`diffseg.scores`), all on CPU: the same label
        maps, for the cost of two more merges and label maps per image."""
        scored = segment_images_scored(maps, self.config, [image.mask_size for image in images])
        return [result.cpu() for result in scored]

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
