"""Loading the parts of a Stable Diffusion model that DiffSeg and DiffCut need: UNet, VAE, the empty-prompt
conditioning and the noise schedule, for SD 1.x and SDXL-family (SDXL, SSD-1B, Segmind-Vega) models."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models import modeling_utils
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from . import builtin
from .defaults import DEFAULT_MODEL, PRECISIONS

DTYPES = {name: getattr(torch, name) for name in PRECISIONS}
"""Model precisions by name, as command lines accept them."""

# What is fetched from the Hub for a model id: configs, the tokenizers, the scheduler config and the fp32
# safetensors weights of the models used, not the checkpoints, fp16 variants or safety checker a repository also
# holds. The second text encoder and tokenizer exist in SDXL-family repositories only; a pattern that matches
# nothing fetches nothing.
HUB_FILES = [
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
    "tokenizer/*", "tokenizer_2/*",
    "scheduler/scheduler_config.json",
]
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says which and what to do."""


@dataclass
class LoadedModel:
    """UNet and VAE ready for inference, the cached empty-prompt conditioning, the noise schedule, and where
    they came from."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    """The VAE's encoder side only (see `_encoder_only`), in the model's dtype except where an SDXL-family VAE
    must stay in fp32 (`_vae_dtype`): cast pixels to `vae.dtype`."""
    context: torch.Tensor
    """Empty-prompt text embedding `(1, tokens, dim)` on the model's device and dtype (SDXL family: both text
    encoders' penultimate hidden states, concatenated)."""
    info: dict[str, Any]
    """Provenance: `model` (name, id or path), `source` (builtin, hub or local), and for real weights
    `revision` (Hub commit) and `weights` (sha256 of each weight file used)."""
    pooled: torch.Tensor | None
    """SDXL family: the pooled empty-prompt embedding `(1, D)` on the model's device and dtype; None for SD."""
    scheduler: DDIMScheduler
    """DDIM with trailing timestep spacing, as DiffCut builds it; only its `add_noise` is used."""

    @property
    def family(self) -> str:
        """"sd" or "sdxl" (see `model_family`)."""
        return model_family(self.unet)

    def unet_inputs(self, batch: int, size: tuple[int, int]) -> dict[str, Any]:
        """Keyword arguments of the UNet call, besides sample and timestep, for `batch` images processed at `size`
        (height, width) pixels: `encoder_hidden_states` `(batch, tokens, dim)`, and for the SDXL family
        `added_cond_kwargs` with `text_embeds` `(batch, D)` and `time_ids` `(batch, 6)`.

        The time ids are SDXL's size conditioning: original size, crop top-left, target size. Like the official
        DiffCut code (which passes (1024, 1024), (0, 0), (1024, 1024) for its 1024 px squares), the original and
        target sizes are the processed size and the crop is (0, 0).
        """
        inputs: dict[str, Any] = {"encoder_hidden_states": self.context.expand(batch, -1, -1)}
        if self.family == "sdxl":
            height, width = size
            time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=self.unet.dtype,
                                    device=self.unet.device)
            inputs["added_cond_kwargs"] = {"text_embeds": self.pooled.expand(batch, -1),
                                           "time_ids": time_ids.expand(batch, -1)}
        return inputs


def model_family(unet: UNet2DConditionModel) -> str:
    """"sdxl" for a UNet conditioned on a pooled text embedding and the image size (`addition_embed_type`
    "text_time": SDXL, SSD-1B, Segmind-Vega), "sd" otherwise (SD 1.x, 2.x).

    The UNet's config decides, not the presence of `text_encoder_2/`: it is what defines the inputs the forward
    needs, and an SDXL-family folder that lacks the second text encoder is then refused as incomplete.
    """
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd"


def load_model(model: str = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, revision: str | None = None) -> LoadedModel:
    """Load `model`: a Hub id, a local folder in the diffusers layout, or a built-in name (`tiny`, `tiny-xl`, ...).

    A Hub id goes through the Hub cache (so `HF_HUB_OFFLINE=1` works with a populated cache) and is then
    loaded from that folder exactly like a local one. The text encoders are used once for the empty-prompt
    conditioning and released.
    """
    if model in builtin.SPECS:
        parts = builtin.build(model)
        scheduler = _scheduler(None)
        info = {"model": model, "source": "builtin", "random_weights": True,
                "note": "built-in random weights: the masks are meaningless"}
    else:
        folder, info = _resolve(model, revision)
        try:
            parts = _read(folder, dtype)
            scheduler = _scheduler(folder)
        except (OSError, ValueError) as error:
            raise ModelLoadError(_advice(model, _first_line(error))) from error
        info["weights"] = weight_digests(Path(folder))
    family = model_family(parts.unet)
    if family == "sdxl":
        context, pooled = empty_prompt_embedding_xl((parts.tokenizer, parts.tokenizer_2),
                                                    (parts.text_encoder, parts.text_encoder_2))
        pooled = pooled.to(device=device, dtype=dtype)
    else:
        context, pooled = empty_prompt_embedding(parts.tokenizer, parts.text_encoder), None
    unet, vae = parts.unet, _encoder_only(parts.vae)
    del parts  # releases the text encoders (SDXL's second one is 2.8 GB in fp32)
    return LoadedModel(_ready(unet, device, dtype), _ready(vae, device, _vae_dtype(vae, family, dtype)),
                       context.to(device=device, dtype=dtype), info, pooled, scheduler)


def _vae_dtype(vae: AutoencoderKL, family: str, dtype: torch.dtype) -> torch.dtype:
    """The VAE's precision when the model is asked in `dtype`: fp32 for an SDXL-family VAE whose config sets
    `force_upcast` when fp16 is asked, as diffusers' SDXL pipelines do (SDXL's VAE overflows in fp16), else `dtype`.

    SD 1.x VAEs stay in `dtype`, as in diffusers' SD pipelines: diffusers gives every VAE config `force_upcast`
    by default, so only the SDXL family reads it."""
    if family == "sdxl" and vae.config.force_upcast and dtype == torch.float16:
        return torch.float32
    return dtype


def _read(folder: str, dtype: torch.dtype) -> builtin.Components:
    """The model's parts from a diffusers folder: UNet in `dtype`; VAE in fp32, since its precision depends on the
    model family (`_vae_dtype`; reading fp32 and casting later rounds exactly as reading in `dtype` would); text
    encoders as stored (`_aligned`), the second one and its tokenizer for the SDXL family only."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    text_encoder = _aligned(CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"))
    parts = builtin.Components(unet, vae, text_encoder, CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"))
    if model_family(unet) == "sdxl":
        parts.text_encoder_2 = _aligned(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"))
        parts.tokenizer_2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    return parts


def _scheduler(folder: str | None) -> DDIMScheduler:
    """DDIM with trailing timestep spacing (DiffCut's noise schedule), from the folder's `scheduler/` config when
    it has one, whatever scheduler class that names (`add_noise` only reads the betas), else SD's betas."""
    if folder is not None and (Path(folder) / "scheduler" / "scheduler_config.json").is_file():
        config = DDIMScheduler.load_config(folder, subfolder="scheduler")
        return DDIMScheduler.from_config(config, timestep_spacing="trailing")
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", timestep_spacing="trailing")


def _encoder_only(vae: AutoencoderKL) -> AutoencoderKL:
    """`vae` without its decoder (about 60% of its weights), which DiffSeg never runs: less to move to and keep
    on the device. `encode` works as before; `decode` no longer does."""
    vae.decoder = None
    vae.post_quant_conv = None
    return vae


def _ready(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    module = module.to(device)
    if module.dtype != dtype:
        with _no_empty_fp32_notice():
            module = module.to(dtype)
    return _aligned(module).eval().requires_grad_(False)


@contextmanager
def _no_empty_fp32_notice() -> Iterator[None]:
    """Without diffusers' warning that a model cast with `to(dtype)` may lose the modules it keeps in float32,
    where the model keeps none: diffusers warns on every cast, listing `[]` for SD's UNet and VAE. A model that
    does list modules still warns."""
    modeling_utils.logger.addFilter(_lists_fp32_modules)
    try:
        yield
    finally:
        modeling_utils.logger.removeFilter(_lists_fp32_modules)


def _lists_fp32_modules(record: logging.LogRecord) -> bool:
    return "should be kept in float32: []" not in record.getMessage()


def _aligned(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every weight at a 64-byte aligned address. Weights read from a file can sit at unaligned
    addresses, where CPU kernels take other code paths and round differently: copied, the same weights give the
    same outputs (conditioning, masks) however they were loaded."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
    return module


def empty_prompt_embedding(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> torch.Tensor:
    """The unconditional context: "" padded to the encoder's length, through the text encoder. `(1, T, D)`."""
    length = text_encoder.config.max_position_embeddings
    ids = tokenizer("", padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


def empty_prompt_embedding_xl(tokenizers: tuple[CLIPTokenizer, CLIPTokenizer],
                              text_encoders: tuple[CLIPTextModel, CLIPTextModelWithProjection]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional context and pooled embedding of an SDXL-family model, as the SDXL pipeline's
    `encode_prompt("")` without guidance gives them: per encoder, "" padded (with truncation) to its tokenizer's
    `model_max_length` and its penultimate hidden state; the two concatenated on the last dim `(1, T, D1 + D2)`;
    and the second encoder's projected pooled output `text_embeds` `(1, P)`. Both fp32, on CPU."""
    states = []
    with torch.inference_mode():
        for tokenizer, encoder in zip(tokenizers, text_encoders):
            ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            output = encoder(ids.to(encoder.device), output_hidden_states=True)
            states.append(output.hidden_states[-2].float().cpu())
        return torch.cat(states, dim=-1), output.text_embeds.float().cpu()


def weight_digests(folder: Path) -> dict[str, str]:
    """sha256 of the UNet and VAE weight files in a diffusers folder, keyed by relative path.

    Files in the Hub cache are links to blobs named by their sha256, which is used without rereading.
    """
    digests = {}
    for part in ("unet", "vae"):
        for name in WEIGHT_FILES:
            path = folder / part / name
            if path.exists():
                blob = Path(os.path.realpath(path)).name
                digests[f"{part}/{name}"] = blob if _SHA256.match(blob) else _sha256(path)
                break
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _resolve(model: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """The local folder holding `model`, and its provenance."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), {"model": str(path.resolve()), "source": "local"}
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(_advice(model, "no such folder"))
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model, revision=revision, allow_patterns=HUB_FILES)
    except Exception as error:  # the Hub client raises many unrelated types for "not available"
        raise ModelLoadError(_advice(model, _first_line(error))) from error
    return folder, {"model": model, "source": "hub", "revision": Path(folder).name}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _advice(model: str, reason: str) -> str:
    return (f"cannot load model {model!r} ({reason}). Pass a Hub id that is reachable or cached, or a local "
            "folder in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/, and for SDXL-family models "
            "text_encoder_2/ and tokenizer_2/); "
            "use the model 'tiny' (or 'tiny-xl', the SDXL layout) for a smoke run without weights.")
