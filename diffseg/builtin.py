"""Built-in random-weight models with the Stable Diffusion 1.x layout, for tests, smoke runs and benchmarks.

Their masks are meaningless: the weights are random. They exist so that every code path, including
`save_pretrained` / `from_pretrained`, can run with no download.

- `tiny`: the real UNet layout (16 self-attention layers over 4 resolutions, 8 heads) at tiny width,
  with sharpened self-attention so that its (noise) masks have many segments.
- `sd15-random`: the full-size SD 1.5 UNet and VAE, built from their published configs (real arithmetic
  and memory, for speed measurements); its text encoder is reduced to one layer, since only the shape of
  the empty-prompt embedding matters with random weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SD_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
VAE_DOWN_BLOCKS = ("DownEncoderBlock2D",) * 4
VAE_UP_BLOCKS = ("UpDecoderBlock2D",) * 4


@dataclass(frozen=True)
class _Spec:
    channels: tuple[int, ...]
    norm_groups: int
    context_dim: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    text_layers: int
    text_heads: int
    attention_gain: float
    """Factor on the self-attention query and key weights. Default init gives near-uniform attention and
    so a single segment; the tiny model sharpens it so that its masks have many segments."""


SPECS = {
    "tiny": _Spec(channels=(32, 32, 64, 64), norm_groups=8, context_dim=32, vae_channels=(8, 8, 16, 16),
                  vae_layers=1, text_layers=1, text_heads=2, attention_gain=8.0),
    "sd15-random": _Spec(channels=(320, 640, 1280, 1280), norm_groups=32, context_dim=768,
                         vae_channels=(128, 256, 512, 512), vae_layers=2, text_layers=1, text_heads=12,
                         attention_gain=1.0),
}


@dataclass
class Components:
    """The parts of a Stable Diffusion model that DiffSeg uses."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def build(name: str, seed: int = 0) -> Components:
    """Build the built-in model `name` with deterministic random weights (same seed, same weights)."""
    spec = SPECS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=spec.channels, down_block_types=SD_DOWN_BLOCKS, up_block_types=SD_UP_BLOCKS,
            cross_attention_dim=spec.context_dim, attention_head_dim=8, norm_num_groups=spec.norm_groups,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=spec.vae_channels,
            down_block_types=VAE_DOWN_BLOCKS, up_block_types=VAE_UP_BLOCKS, layers_per_block=spec.vae_layers,
            norm_num_groups=spec.norm_groups, sample_size=512, scaling_factor=0.18215,
        )
        tokenizer = _tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=spec.context_dim, intermediate_size=4 * spec.context_dim,
            num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads, max_position_embeddings=77,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
        for block in unet.modules():
            if isinstance(block, Attention) and not block.is_cross_attention:
                block.to_q.weight.data *= spec.attention_gain
                block.to_k.weight.data *= spec.attention_gain
    return Components(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer)


def _tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a minimal in-memory vocabulary (only the empty prompt is ever encoded)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, letter in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[letter] = 2 + 2 * i
        vocab[letter + "</w>"] = 3 + 2 * i
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
