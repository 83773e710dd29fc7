"""Built-in random-weight models with the Stable Diffusion 1.x and SDXL layouts, for tests, smoke runs and
benchmarks.

Their masks are meaningless: the weights are random. They exist so that every code path, including
`save_pretrained` / `from_pretrained`, can run with no download.

- `tiny`: the real SD 1.x UNet layout (16 self-attention layers over 4 resolutions, 8 heads) at tiny width,
  with sharpened self-attention so that its (noise) masks have many segments.
- `sd15-random`: the full-size SD 1.5 UNet and VAE, built from their published configs (real arithmetic
  and memory, for speed measurements); its text encoder is reduced to one layer, since only the shape of
  the empty-prompt embedding matters with random weights.
- `tiny-xl`: the SDXL layout at tiny width: 3 down blocks (the first without attention), several transformer
  layers per attention block in the deepest blocks, the pooled-text and size conditioning (`text_time`), two
  text encoders and a VAE with SDXL's scaling factor; sharpened self-attention like `tiny`.
- `ssd1b-random`: the full-size SSD-1B UNet (Segmind's distilled SDXL, DiffCut's default model; 1.33 billion
  parameters) and the SDXL VAE, built from their published configs, for speed and memory measurements. Its two
  text encoders have the real widths (768 and 1280, context 2048, pooled 1280) but two layers each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SD_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
SDXL_DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
SDXL_UP_BLOCKS = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
VAE_DOWN_BLOCKS = ("DownEncoderBlock2D",) * 4
VAE_UP_BLOCKS = ("UpDecoderBlock2D",) * 4
TIME_IDS = 6
"""Size conditioning numbers of an SDXL-family UNet per image: original size, crop top-left, target size."""


@dataclass(frozen=True)
class _Spec:
    """A model with the SD 1.x layout."""

    channels: tuple[int, ...]
    norm_groups: int
    context_dim: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    text_layers: int
    text_heads: int
    attention_gain: float
    """Factor on the self-attention query and key weights. Default init gives near-uniform attention and
    so a single segment; the tiny models sharpen it so that their masks have many segments."""


@dataclass(frozen=True)
class _XLSpec:
    """A model with the SDXL layout (3 down blocks, `text_time` conditioning, two text encoders)."""

    channels: tuple[int, int, int]
    heads: tuple[int, int, int]
    """Attention heads per block (what SDXL configs call `attention_head_dim`)."""
    transformer_layers: tuple[int, int, int]
    """Transformer layers per attention block of each down block (the first has no attention)."""
    up_transformer_layers: tuple | None
    """Those of the up blocks, where they are not the mirror of the down blocks' (SSD-1B); else None."""
    mid_block: str
    norm_groups: int
    text_widths: tuple[int, int]
    """Hidden sizes of the two text encoders: the context is their concatenation, the pooled embedding the
    second one's projection, as wide as that encoder (as in SDXL)."""
    text_layers: int
    text_head_dim: int
    time_embed_dim: int
    """Width of the sinusoidal embedding of each size conditioning number (`addition_time_embed_dim`)."""
    vae_channels: tuple[int, ...]
    vae_layers: int
    attention_gain: float
    """As `_Spec.attention_gain`."""


SPECS: dict[str, _Spec | _XLSpec] = {
    "tiny": _Spec(channels=(32, 32, 64, 64), norm_groups=8, context_dim=32, vae_channels=(8, 8, 16, 16),
                  vae_layers=1, text_layers=1, text_heads=2, attention_gain=8.0),
    "sd15-random": _Spec(channels=(320, 640, 1280, 1280), norm_groups=32, context_dim=768,
                         vae_channels=(128, 256, 512, 512), vae_layers=2, text_layers=1, text_heads=12,
                         attention_gain=1.0),
    # Two text layers, so that the penultimate hidden state SDXL takes is a layer's output, not the embeddings.
    "tiny-xl": _XLSpec(channels=(32, 64, 64), heads=(2, 4, 4), transformer_layers=(1, 2, 3),
                       up_transformer_layers=None, mid_block="UNetMidBlock2DCrossAttn", norm_groups=8,
                       text_widths=(16, 32), text_layers=2, text_head_dim=8, time_embed_dim=8,
                       vae_channels=(8, 8, 16, 16), vae_layers=1, attention_gain=8.0),
    # segmind/SSD-1B unet/config.json: SDXL's blocks, widths and conditioning with fewer transformer layers
    # (down 2 and 4 per attention block instead of 2 and 10, up (4, 4, 10) and (2, 1, 1)) and a mid block of one
    # resnet without attention.
    "ssd1b-random": _XLSpec(channels=(320, 640, 1280), heads=(5, 10, 20), transformer_layers=(1, 2, 4),
                            up_transformer_layers=((4, 4, 10), (2, 1, 1), 1), mid_block="UNetMidBlock2D",
                            norm_groups=32, text_widths=(768, 1280), text_layers=2, text_head_dim=64,
                            time_embed_dim=256, vae_channels=(128, 256, 512, 512), vae_layers=2,
                            attention_gain=1.0),
}


@dataclass
class Components:
    """The parts of a Stable Diffusion model that DiffSeg and DiffCut use."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    text_encoder_2: CLIPTextModelWithProjection | None = None
    """SDXL family only: the second text encoder, which also gives the pooled embedding."""
    tokenizer_2: CLIPTokenizer | None = None
    """SDXL family only: the second text encoder's tokenizer."""


def build(name: str, seed: int = 0) -> Components:
    """Build the built-in model `name` with deterministic random weights (same seed, same weights)."""
    spec = SPECS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = _build_sd(spec) if isinstance(spec, _Spec) else _build_xl(spec)
        for block in parts.unet.modules():
            if isinstance(block, Attention) and not block.is_cross_attention:
                block.to_q.weight.data *= spec.attention_gain
                block.to_k.weight.data *= spec.attention_gain
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.eval()
    return parts


def _build_sd(spec: _Spec) -> Components:
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=spec.channels, down_block_types=SD_DOWN_BLOCKS, up_block_types=SD_UP_BLOCKS,
        cross_attention_dim=spec.context_dim, attention_head_dim=8, norm_num_groups=spec.norm_groups,
    )
    vae = _vae(spec.vae_channels, spec.vae_layers, spec.norm_groups, sample_size=512, scaling_factor=0.18215)
    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, spec.context_dim, spec.text_layers, spec.text_heads))
    return Components(unet, vae, text_encoder, tokenizer)


def _build_xl(spec: _XLSpec) -> Components:
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=spec.channels, down_block_types=SDXL_DOWN_BLOCKS, up_block_types=SDXL_UP_BLOCKS,
        mid_block_type=spec.mid_block, attention_head_dim=spec.heads,
        transformer_layers_per_block=spec.transformer_layers,
        reverse_transformer_layers_per_block=spec.up_transformer_layers,
        cross_attention_dim=sum(spec.text_widths), use_linear_projection=True, norm_num_groups=spec.norm_groups,
        addition_embed_type="text_time", addition_time_embed_dim=spec.time_embed_dim,
        projection_class_embeddings_input_dim=spec.text_widths[1] + TIME_IDS * spec.time_embed_dim,
    )
    # SDXL's VAE overflows in fp16: its config asks for fp32 (`force_upcast`), which `load_model` honours.
    vae = _vae(spec.vae_channels, spec.vae_layers, spec.norm_groups, sample_size=1024, scaling_factor=0.13025,
               force_upcast=True)
    encoders, tokenizers = [], []
    for cls, width in zip((CLIPTextModel, CLIPTextModelWithProjection), spec.text_widths):
        tokenizers.append(_tokenizer())
        config = _text_config(tokenizers[-1], width, spec.text_layers, width // spec.text_head_dim)
        encoders.append(cls(config))
    return Components(unet, vae, encoders[0], tokenizers[0], encoders[1], tokenizers[1])


def _vae(channels: tuple[int, ...], layers: int, norm_groups: int, **config) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
        down_block_types=VAE_DOWN_BLOCKS, up_block_types=VAE_UP_BLOCKS, layers_per_block=layers,
        norm_num_groups=norm_groups, **config,
    )


def _text_config(tokenizer: CLIPTokenizer, width: int, layers: int, heads: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, projection_dim=width,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def _tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with a minimal in-memory vocabulary (only the empty prompt is ever encoded)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, letter in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[letter] = 2 + 2 * i
        vocab[letter + "</w>"] = 3 + 2 * i
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
