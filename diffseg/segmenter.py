"""`DiffSeg`: images in, DiffSeg or DiffCut label maps out, with a Stable Diffusion model held in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch

from .attention import SelfAttentionCapture
from .config import DiffSegConfig
from .defaults import DEFAULT_MODEL, MAX_PIXELS
from .descriptors import segment_descriptors
from .features import layer_features, recorded_features
from .methods import METHODS, Method
from .model import LoadedModel, load_model
from .preprocess import ImageInput, PreparedImage, prepare
from .segment import Segmentation
from .streaming import stream

GPU_BATCH_SIZE = 8
"""Images per forward on a GPU by default: enough to fill a data-center GPU at 512 px (benchmarks/README.md)."""
NATIVE_RESOLUTION = {"sd": 512, "sdxl": 1024}
"""Pixels per side at which each model family's UNet sees 64 x 64 latent tokens at its finest attention."""
VAE_MEMORY_PER_IMAGE = 5 * 2**27
"""Bytes the VAE encoder's activations of one 512 px image may take in fp32 (0.625 GiB: a few live tensors of 128
channels x 512 x 512); half that in fp16 or bf16. SDXL's VAE runs in fp32 (`model.load_model`): 2.5 GiB at 1024 px."""
NOISE_SEED = 42
"""Seed of the one noise tensor DiffCut adds to every latent (a CPU `torch.Generator`, so the same on any device)."""


class Forward(NamedTuple):
    """One image's share of a forward (`DiffSeg.forward_batch`), on the model's device."""

    evidence: Any
    """What the method segments: DiffSeg, the per-resolution attention `(h, w, h, w)` (fp32, finest first), ready
    for `segment_from_attention`; DiffCut, the features `(h, w, C)` (the model's dtype), ready for
    `segment_from_features`."""
    features: torch.Tensor | None
    """With `descriptors`, the feature layer's output `(h, w, C)` the descriptors come from (for DiffCut, the
    evidence itself); else None."""


class DiffSeg:
    """Zero-shot segmentation from a Stable Diffusion UNet: DiffSeg (Tian et al., CVPR 2024) or DiffCut (Couairon
    et al., NeurIPS 2024), as `config.method` says.

    Per batch of same-size images, the VAE posterior mean x scaling factor goes through one UNet forward with the
    empty-prompt context, then:

    - DiffSeg (and K-Means-C): at `config.timestep` with no noise; the self-attention of every layer is captured,
      then aggregated, merged and turned into labels by per-pixel argmax (`segment_images`). On SDXL-family
      models, whose self-attention layers sit at fewer resolutions (1/16 and 1/32 of the pixels: there is none at
      the latent's own), the aggregation weighs the resolutions present in proportion to their grid side, as it
      does SD's four.
    - DiffCut: the latent is noised to `config.timestep` with one fixed noise (`NOISE_SEED`), the forward stops
      right after the feature layer (`features.feature_layer`), and the features are cut recursively
      (`diffcut.segment_features`).

    Example::

        segmenter = DiffSeg.from_pretrained("CompVis/stable-diffusion-v1-4")
        labels = segmenter.segment(["cat.jpg", "street.png"])  # [(H, W) uint8 tensors]
        diffcut = DiffSeg.from_pretrained("segmind/SSD-1B", DiffSegConfig(method="diffcut"))
    """

    def __init__(self, model: LoadedModel, config: DiffSegConfig | None = None,
                 max_pixels: int = MAX_PIXELS, descriptors: bool = False) -> None:
        """
        Args:
            model: loaded UNet, VAE and context (see `load_model`).
            config: algorithm settings; `DiffSegConfig()` (the paper's) when None.
            max_pixels: images with more pixels are refused before decoding (decompression-bomb guard).
            descriptors: `label_batch_scored` also gives each segment's descriptor (`diffseg.descriptors`), from
                the same forward.
        """
        self.model = model
        self.config = config or DiffSegConfig()
        self.max_pixels = max_pixels
        self.descriptors = descriptors
        self.method: Method = METHODS[self.config.method]
        # A features method reads one layer's output through a hook and keeps the stock (fused) attention everywhere.
        self.capture = SelfAttentionCapture.of(model.unet) if self.method.capture == "attention" else None
        # Once, here: the free memory read later would count other actors' and PyTorch's own cache as used, and
        # the batch size could change from shard to shard.
        self._noises: dict[tuple[int, ...], torch.Tensor] = {}
        self.default_batch_size = self._batch_size_at_load()
        """Images per forward when none is asked for: 1 on CPU, where a batch only adds latency; on a GPU
        `GPU_BATCH_SIZE`, or as many images of `memory_per_image` as fit in the device memory free at load."""

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, config: DiffSegConfig | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        revision: str | None = None, max_pixels: int = MAX_PIXELS, descriptors: bool = False
                        ) -> DiffSeg:
        """Load `model` (Hub id, local diffusers folder, or a built-in: `tiny`, `tiny-xl`, `sd15-random`,
        `ssd1b-random`) and build a segmenter.

        `device` defaults to CUDA when available, else CPU; `dtype` to fp16 on CUDA and fp32 elsewhere.
        Raises `ModelLoadError` with a one-line explanation when the model cannot be found.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        return cls(load_model(model, device=device, dtype=dtype, revision=revision), config, max_pixels, descriptors)

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

    def _batch_size_at_load(self) -> int:
        if self.device.type != "cuda":
            return 1
        per_image = memory_per_image(self.config.method, self.model.family, self.config.resolution,
                                     self.model.vae.dtype)
        return max(1, min(GPU_BATCH_SIZE, device_memory_budget(self.device) // per_image))

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
        `forward_batch`), post-processed together on the model's device (`label_batch`)."""
        return self.label_batch(images, self.forward_batch(images, batch_size))

    def label_batch(self, images: Sequence[PreparedImage], forwards: Sequence[Forward],
                    config: DiffSegConfig | None = None, sizes: Sequence[tuple[int, int]] | None = None
                    ) -> list[torch.Tensor]:
        """The label maps (as `segment`, on CPU) of `images` from their `forward_batch` output, post-processed
        together on its device (the method's `PostProcessing.labels`). Separate from the forward so
        that a GPU can run one batch's post-processing while it runs the next batch's forward (see
        `overlap.Overlapped`).

        Args:
            config: post-processing settings other than this segmenter's (of the same method family, since the
                forward decided what `evidence` is: a threshold sweep, say); None: `self.config`.
            sizes: `(height, width)` of each label map; None: each image's `mask_size`.
        """
        config = config or self.config
        sizes = sizes or [image.mask_size for image in images]
        evidence = [forward.evidence for forward in forwards]
        labels = METHODS[config.method].post_processing().labels(evidence, config, sizes,
                                                                  [image.pixels for image in images])
        return [label.cpu() for label in labels]

    def label_batch_scored(self, images: Sequence[PreparedImage], forwards: Sequence[Forward]) -> list[Segmentation]:
        """`label_batch` with each segment's `score` and `stability` (`diffseg.scores`), and with `descriptors` its
        descriptor, all on CPU: the same label maps, for the cost of two more merges (DiffSeg) or cuts (DiffCut)
        and label maps per image."""
        sizes = [image.mask_size for image in images]
        evidence = [forward.evidence for forward in forwards]
        scored = self.method.post_processing().scored(evidence, self.config, sizes, [image.pixels for image in images])
        if self.descriptors:
            scored = [_described(result, forward.features) for result, forward in zip(scored, forwards)]
        return [result.cpu() for result in scored]

    def forward_batch(self, images: Sequence[PreparedImage], batch_size: int) -> list[Forward]:
        """Per image of 1 to `batch_size` images of one processing size, from one forward, what the method
        segments and, with `descriptors`, the features they come from (`Forward`).

        The batch is padded to `batch_size` with copies of its last image: every forward then has the same
        shape, so the vendor kernels chosen (and their rounding) are the same, and an image's attention does
        not depend on the other images in its batch. At another row of the batch, or with another
        `batch_size`, some BLAS kernels round differently (a few ulps), which can flip a label only where two
        choices nearly tie.
        """
        padded = [*images, *[images[-1]] * (batch_size - len(images))]
        pixels = self._on_device([image.pixels for image in padded])
        if self.method.capture == "features":
            return [Forward(f, f if self.descriptors else None) for f in self.features(pixels)[:len(images)]]
        if self.descriptors:
            with recorded_features(self.model.unet) as recorded:
                maps = self.attention(pixels)
            features = recorded[0]
        else:
            maps, features = self.attention(pixels), None
        return [Forward([m[row] for m in maps], None if features is None else features[row])
                for row in range(len(images))]

    @torch.inference_mode()
    def attention(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Per-resolution self-attention `(B, h, w, h, w)` (fp32, finest first) for pixels `(B, 3, H, W)`
        in [-1, 1], H and W multiples of 64."""
        latents = self._latents(pixels)
        timestep = torch.full((len(pixels),), self.config.timestep, device=self.device, dtype=torch.long)
        self.capture.reset()
        self.model.unet(latents, timestep, **self.model.unet_inputs(len(pixels), tuple(pixels.shape[-2:])))
        return self.capture.maps(tuple(latents.shape[-2:]))

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """DiffCut's features `(B, h, w, C)` (the model's dtype; h, w = H / 32, W / 32) for pixels `(B, 3, H, W)` in
        [-1, 1], H and W multiples of 64: the latents noised to `config.timestep` with one noise for the whole
        batch, as the paper does, through the UNet up to the feature layer."""
        latents = self._latents(pixels).float()  # noised in fp32, as the paper does, then cast for the UNet
        noise = self._noise(tuple(latents.shape[1:]))
        timestep = torch.full((len(pixels),), self.config.timestep, device=self.device, dtype=torch.long)
        noisy = self.model.scheduler.add_noise(latents, noise.expand_as(latents), timestep).to(self.dtype)
        return layer_features(self.model.unet, noisy, timestep,
                             **self.model.unet_inputs(len(pixels), tuple(pixels.shape[-2:])))

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """DiffCut's noise `(1, *shape)` fp32 on the model's device, made once per latent shape: a copy from
        pageable host memory on every forward would make the model thread wait for the device to finish the
        previous batch."""
        if shape not in self._noises:
            generator = torch.Generator().manual_seed(NOISE_SEED)
            self._noises[shape] = torch.randn((1, *shape), generator=generator).to(self.device)
        return self._noises[shape]

    def _on_device(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The `(3, H, W)` CPU pixels stacked into one `(B, 3, H, W)` batch on the model's device. To a GPU through
        pinned memory without waiting: the copy is queued behind the previous forward instead of stalling the
        model thread until the device is idle."""
        if self.device.type != "cuda":
            return torch.stack(list(pixels))
        pinned = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype, pin_memory=True)
        return torch.stack(list(pixels), out=pinned).to(self.device, non_blocking=True)

    def _latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean x scaling factor `(B, 4, H / 8, W / 8)` in the UNet's dtype (the VAE's may be fp32,
        see `model.load_model`), for pixels in [-1, 1]."""
        vae = self.model.vae
        pixels = pixels.to(device=self.device, dtype=vae.dtype)
        return (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).to(self.dtype)


def memory_per_image(method: str, family: str, resolution: int, vae_dtype: torch.dtype) -> int:
    """Bytes of device memory one image of a batch may need with `method` on a `family` model at `resolution`
    pixels (the longer side) and a VAE in `vae_dtype`: each part grows with the pixels it sees, the UNet's from the
    family's native size (`Method.unet_memory`), the VAE's from 512 px."""
    unet = METHODS[method].unet_memory * (resolution / NATIVE_RESOLUTION[family]) ** 2
    vae = VAE_MEMORY_PER_IMAGE * (resolution / 512) ** 2 * torch.finfo(vae_dtype).bits / 32
    return int(unet + vae)


def device_memory_budget(device: torch.device) -> int:
    """Bytes this process may still allocate on the CUDA `device`: what is free on it plus PyTorch's cached blocks
    that no tensor holds, within the process's share when one is set (`torch.cuda.set_per_process_memory_fraction`,
    see `pipeline.labeling.worker`)."""
    free, total = torch.cuda.mem_get_info(device)
    reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
    budget = free + reserved - allocated
    share = torch.cuda.get_per_process_memory_fraction(device)
    return min(budget, int(share * total) - allocated) if share < 1 else budget


def _described(result: Segmentation, features: torch.Tensor) -> Segmentation:
    """`result` with its segments' float16 descriptors from the feature layer's output `(h, w, C)`."""
    count = int(result.labels.max()) + 1
    descriptors = segment_descriptors(result.labels, features.to(result.labels.device), count).half()
    return dataclasses.replace(result, descriptors=descriptors)
