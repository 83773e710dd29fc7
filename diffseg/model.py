"""Loading the parts of a Stable Diffusion model that DiffSeg needs: UNet, VAE and the empty-prompt context."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from . import builtin
from .defaults import DEFAULT_MODEL, PRECISIONS

DTYPES = {name: getattr(torch, name) for name in PRECISIONS}
"""Model precisions by name, as command lines accept them."""

# What is fetched from the Hub for a model id: configs, the tokenizer and the fp32 safetensors weights
# of the three models used, not the checkpoints, fp16 variants or safety checker a repository also holds.
HUB_FILES = [
    "model_index.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/*",
]
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says which and what to do."""


@dataclass
class LoadedModel:
    """UNet and VAE ready for inference, the cached empty-prompt context, and where they came from."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    """The VAE's encoder side only (see `_encoder_only`)."""
    context: torch.Tensor
    """Empty-prompt text embedding `(1, tokens, dim)` on the model's device and dtype."""
    info: dict[str, Any]
    """Provenance: `model` (name, id or path), `source` (builtin, hub or local), and for real weights
    `revision` (Hub commit) and `weights` (sha256 of each weight file used)."""


def load_model(model: str = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, revision: str | None = None) -> LoadedModel:
    """Load `model`: a Hub id, a local folder in the diffusers layout, or a built-in name (`tiny`, ...).

    A Hub id goes through the Hub cache (so `HF_HUB_OFFLINE=1` works with a populated cache) and is then
    loaded from that folder exactly like a local one. The text encoder is used once for the empty-prompt
    embedding and released.
    """
    if model in builtin.SPECS:
        parts = builtin.build(model)
        info = {"model": model, "source": "builtin", "random_weights": True,
                "note": "built-in random weights: the masks are meaningless"}
        unet, vae, tokenizer, text_encoder = parts.unet, parts.vae, parts.tokenizer, parts.text_encoder
    else:
        folder, info = _resolve(model, revision)
        try:
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        except (OSError, ValueError) as error:
            raise ModelLoadError(_advice(model, _first_line(error))) from error
        info["weights"] = weight_digests(Path(folder))
    context = empty_prompt_embedding(tokenizer, text_encoder).to(device=device, dtype=dtype)
    del text_encoder
    return LoadedModel(_ready(unet, device, dtype), _ready(_encoder_only(vae), device, dtype), context, info)


def _encoder_only(vae: AutoencoderKL) -> AutoencoderKL:
    """`vae` without its decoder (about 60% of its weights), which DiffSeg never runs: less to move to and keep
    on the device. `encode` works as before; `decode` no longer does."""
    vae.decoder = None
    vae.post_quant_conv = None
    return vae


def _ready(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    module = module.to(device)
    if module.dtype != dtype:
        module = module.to(dtype)
    # Weights read from a file can sit at unaligned addresses, where CPU kernels take other code paths and
    # round differently: copy them so that the same weights give the same masks however they were loaded.
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
    return module.eval().requires_grad_(False)


def empty_prompt_embedding(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> torch.Tensor:
    """The unconditional context: "" padded to the encoder's length, through the text encoder. `(1, T, D)`."""
    length = text_encoder.config.max_position_embeddings
    ids = tokenizer("", padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        return text_encoder(ids.to(text_encoder.device))[0].float().cpu()


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
            "folder in the diffusers layout (unet/, vae/, text_encoder/, tokenizer/); "
            "use the model 'tiny' for a smoke run without weights.")
