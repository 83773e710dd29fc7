"""DiffCut's image features (Couairon et al., NeurIPS 2024): the output of one self-attention layer of a UNet
forward, computed with an early exit right after that layer.

The layer's output is read after `to_out` and before the transformer block adds its residual, as the official
code's forward hook reads it; the layer keeps whatever processor it has. DiffSeg's `SelfAttentionCapture`
replaces the processor of every self-attention layer, and its processor returns the stock output up to rounding,
so the features are the same (up to that rounding) whether or not a capture is installed on the UNet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention


class _Reached(Exception):
    """Raised by the hook on the feature layer to end the forward there."""


def feature_layer(unet: UNet2DConditionModel) -> Attention:
    """The self-attention module whose output DiffCut uses: in the second attention block of the third down block
    (the official code's `down_blocks[-2]` for SD 1.x, `down_blocks[-1]` for the SDXL family), its transformer's
    first layer for SD 1.x (`down_blocks[2].attentions[1].transformer_blocks[0].attn1`, the only one there) and
    last layer for the SDXL family (`down_blocks[2].attentions[1].transformer_blocks[-1].attn1`).

    Raises ValueError for a UNet with another layout.
    """
    transformer = _feature_transformer(unet)
    blocks = transformer.transformer_blocks
    return blocks[0].attn1 if len(unet.down_blocks) == 4 else blocks[-1].attn1


@torch.inference_mode()
def layer_features(unet: UNet2DConditionModel, latents: torch.Tensor, timestep: torch.Tensor,
                   **unet_inputs) -> torch.Tensor:
    """The output of `feature_layer(unet)` for one UNet forward, `(B, h, w, C)` in the UNet's dtype.

    Args:
        unet: an SD 1.x or SDXL-family UNet.
        latents: `(B, 4, H, W)` (any H, W the UNet accepts; not necessarily square).
        timestep: the UNet's timestep argument (a scalar or `(B,)`).
        **unet_inputs: the rest of the UNet call (`encoder_hidden_states`, and for the SDXL family
            `added_cond_kwargs`): see `LoadedModel.unet_inputs`.

    Returns:
        The layer's output per token on the `(h, w)` grid of the transformer that holds the layer (read from its
        input, so no downsampling factor is assumed), token `(y, x)` at `[:, y, x]`.

    The forward stops right after the layer: a hook raises a private exception, caught here, so none of the
    UNet's later blocks run. That is safe: under inference mode no autograd graph is left behind, the UNet keeps
    no state between forwards, and both hooks are removed in `finally` whatever happens. The one thing that sees
    a truncated forward is a stateful attention processor: a `SelfAttentionCapture` on the same UNet holds the
    layers before this one, so reset it before its next forward (DiffSeg's segmenter always does).
    """
    with recorded_features(unet, stop=True) as recorded:
        try:
            unet(latents, timestep, **unet_inputs)
        except _Reached:
            pass
    if not recorded:
        raise RuntimeError("the UNet forward ended without running its feature layer")
    return recorded[0]


@contextmanager
def recorded_features(unet: UNet2DConditionModel, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """While open, each forward of `unet` appends the output of `feature_layer(unet)` to the list it gives, as
    `(B, h, w, C)` (see `layer_features`); with `stop`, the forward then ends there by raising `_Reached`.
    Without `stop`, the forward runs whole (DiffSeg's descriptors read the layer during its own forward)."""
    transformer = _feature_transformer(unet)
    grids: list[tuple[int, int]] = []
    recorded: list[torch.Tensor] = []

    def remember_grid(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, C, h, w)
        grids.append(tuple(hidden.shape[-2:]))

    def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        (height, width) = grids[-1]  # (B, h * w, C), tokens in row-major order
        recorded.append(output.reshape(output.shape[0], height, width, output.shape[-1]))
        if stop:
            raise _Reached()

    handles = [transformer.register_forward_pre_hook(remember_grid, with_kwargs=True),
               feature_layer(unet).register_forward_hook(record)]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def _feature_transformer(unet: UNet2DConditionModel) -> torch.nn.Module:
    """The transformer (`Transformer2DModel`) that holds the feature layer: `down_blocks[2].attentions[1]`."""
    blocks = unet.down_blocks
    if len(blocks) not in (3, 4) or len(getattr(blocks[2], "attentions", ())) < 2:
        raise ValueError(
            f"no DiffCut feature layer in a UNet with down blocks {[type(b).__name__ for b in blocks]}: expected the "
            "SD 1.x layout (4 down blocks) or the SDXL one (3), with two attention blocks in the third")
    return blocks[2].attentions[1]
