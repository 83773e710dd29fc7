"""Capture of the self-attention probabilities of a diffusers UNet during one forward pass.

A `SelfAttentionCapture` installs a processor on every self-attention layer of a `UNet2DConditionModel`.
The processor adds the head-averaged probabilities in fp32 to a running sum kept per token count, computed in
chunks of queries with one sum over the heads, and leaves the layer's output unchanged up to rounding: on a GPU
the output comes from PyTorch's fused attention (SDPA, the stock processor's own kernel) and the probabilities
are computed for the capture only, in chunks sized from the device's free memory; on CPU the fp32 probabilities,
computed anyway, also give the output (one more product, cheaper there than SDPA: see `fused_output`).
Cross-attention layers keep their stock processor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

CHUNK_ELEMENTS = 2**25
"""Elements (not bytes) of one chunk of attention scores on CPU: 2**25 fp32 values are 128 MiB. Chunking over
queries bounds the working memory; the buffers are reused across layers and forwards because fresh
multi-hundred-MiB allocations cost more in page faults than the matmuls they hold."""
DEVICE_MEMORY_SHARE = 0.25
"""On a GPU, the share of the device's free memory (when the capture first runs) that one chunk's scores,
probabilities and head sum may take: the whole layer at once for batch 8 at 512 px on a 40 GB+ GPU."""


class SelfAttentionCapture:
    """Per-resolution mean self-attention of a UNet forward, as `(B, h, w, h, w)` tensors.

    Usage::

        capture = SelfAttentionCapture(unet)
        capture.reset()
        unet(latents, t, encoder_hidden_states=context)
        maps = capture.maps(latents.shape[-2:])  # finest grid first

    Each returned map is fp32, query dims first, averaged over the heads of a layer and over the layers
    that share its token count; every key map `maps[i][b, y, x]` sums to 1.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        self.layers = [m for m in unet.modules() if isinstance(m, Attention) and not m.is_cross_attention]
        if not self.layers:
            raise ValueError("the model has no self-attention layers to capture")
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._chunks: dict[torch.device, int] = {}
        processor = _CaptureProcessor(self)
        for layer in self.layers:
            layer.set_processor(processor)

    @classmethod
    def of(cls, unet: torch.nn.Module) -> SelfAttentionCapture:
        """The capture installed on `unet`, or a new one. Segmenters built on the same model must share its
        capture: a second one would take the layers over and leave the first capturing nothing."""
        installed = {getattr(m.processor, "capture", None) for m in unet.modules()
                     if isinstance(m, Attention) and not m.is_cross_attention}
        if len(installed) == 1 and isinstance(capture := next(iter(installed)), cls):
            return capture
        return cls(unet)

    def reset(self) -> None:
        """Forget the maps of the previous forward (keeps the scratch buffers)."""
        self._sums.clear()
        self._counts.clear()

    @torch.inference_mode()
    def maps(self, latent_size: tuple[int, int]) -> list[torch.Tensor]:
        """Hand over the captured maps, finest first, for a forward on latents of spatial size `latent_size`.

        The capture is empty afterwards. Token counts are matched to the grids the UNet produces from that
        size by repeated halving (rounding up, as a stride-2 convolution with padding 1 does).
        """
        height, width = latent_size
        grids = {}
        while height * width not in grids:
            grids[height * width] = (height, width)
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        if not self._sums:
            raise RuntimeError("nothing captured: run the UNet forward after reset()")
        result = []
        for tokens in sorted(self._sums, reverse=True):
            if tokens not in grids:
                raise ValueError(f"captured {tokens} tokens, which no grid of latents {latent_size} has")
            h, w = grids[tokens]
            mean = self._sums[tokens].div_(self._counts[tokens])
            result.append(mean.view(mean.shape[0], h, w, h, w))
        self.reset()
        return result

    def _running_sum(self, tokens: int, batch: int, device: torch.device) -> torch.Tensor:
        """The fp32 sum to which one more layer with this token count is about to be added."""
        if tokens in self._sums and self._sums[tokens].shape[0] != batch:
            raise RuntimeError("a forward of another batch size followed without reset()")
        if tokens not in self._sums:
            self._sums[tokens] = torch.zeros(batch, tokens, tokens, dtype=torch.float32, device=device)
            self._counts[tokens] = 0
        self._counts[tokens] += 1
        return self._sums[tokens]

    def _chunk_elements(self, device: torch.device) -> int:
        """Scores per chunk on `device`: `CHUNK_ELEMENTS` on CPU; on a GPU, as many as `DEVICE_MEMORY_SHARE` of its
        free memory holds (fp16 scores, fp32 probabilities and head sum, or fp32 scores that become the probabilities
        in place and head sum: at most 10 bytes each),
        measured once per device since the capture's own buffers are kept."""
        if device.type != "cuda":
            return CHUNK_ELEMENTS
        if device not in self._chunks:
            free, _ = torch.cuda.mem_get_info(device)
            self._chunks[device] = max(CHUNK_ELEMENTS, int(free * DEVICE_MEMORY_SHARE) // 10)
        return self._chunks[device]

    def _buffer(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, tag: str) -> torch.Tensor:
        """Scratch memory of `shape`: on CPU kept for the next layer and forward (see `CHUNK_ELEMENTS`); on a GPU
        fresh from PyTorch's caching allocator, which reuses blocks without a cost, so that the memory is free for
        the post-processing between forwards."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        key = (tag, dtype, device)
        size = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = torch.empty(size, dtype=dtype, device=device)
            self._buffers[key] = buffer
        return buffer[:size].view(shape)


class _CaptureProcessor:
    """Attention processor for self-attention layers: stock math, plus probability capture."""

    def __init__(self, capture: SelfAttentionCapture) -> None:
        self.capture = capture

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if attention_mask is not None or encoder_hidden_states is not None:
            raise ValueError("self-attention capture supports unmasked self-attention only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = None
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        batch, tokens, _ = hidden_states.shape
        heads = attn.heads
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = query.shape[-1] // heads
        query = query.view(batch, tokens, heads, head_dim).transpose(1, 2)
        key = key.view(batch, tokens, heads, head_dim).transpose(1, 2)
        value = value.view(batch, tokens, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = self._attend(attn, query, key, value)
        hidden_states = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, tokens, -1)))

        if spatial_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(spatial_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) v, adding the head-mean probabilities to the capture in chunks of queries."""
        capture = self.capture
        batch, heads, tokens, _ = query.shape
        device, dtype = query.device, query.dtype
        fused = fused_output(device)
        work = score_dtype(device, dtype, attn.upcast_attention)
        # Made contiguous once per layer: a transposed view would be copied again by every chunk's product.
        key_t = (key.to(work) * attn.scale).transpose(-1, -2).contiguous()
        total = capture._running_sum(tokens, batch, device)
        if fused:
            out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        else:
            out = torch.empty_like(query)
            value = value.to(work).contiguous()
        chunk = max(1, min(tokens, capture._chunk_elements(device) // (batch * heads * tokens)))
        for start in range(0, tokens, chunk):
            stop = min(start + chunk, tokens)
            shape = (batch, heads, stop - start, tokens)
            scores = capture._buffer(shape, work, device, "scores")
            torch.matmul(query[:, :, start:stop].to(work), key_t, out=scores)
            if work == torch.float32:
                probs = torch.softmax(scores, dim=-1, out=scores)
            else:
                probs = capture._buffer(shape, torch.float32, device, "probs")
                torch.softmax(scores, dim=-1, dtype=torch.float32, out=probs)
            head_sum = capture._buffer((batch, stop - start, tokens), torch.float32, device, "head_sum")
            total[:, start:stop].add_(torch.sum(probs, dim=1, out=head_sum), alpha=1.0 / heads)
            if not fused:
                out[:, :, start:stop] = torch.matmul(probs, value)
        return out


def fused_output(device: torch.device) -> bool:
    """Whether layers on `device` take their output from PyTorch's fused attention (SDPA) and compute the
    probabilities for the capture only. On GPUs the fused kernel is much faster than a product with the
    probabilities; on CPU the fp32 probabilities, computed anyway, give the output for one more product (measured
    faster than SDPA, see benchmarks/README.md)."""
    return device.type != "cpu"


def score_dtype(device: torch.device, dtype: torch.dtype, upcast: bool = False) -> torch.dtype:
    """The dtype of the scores `q k^T * scale` from which the capture's probabilities are computed, for a layer
    of `dtype` on `device` (`upcast`: the layer's `upcast_attention`).

    Products accumulate in fp32 either way; what differs is the rounding of the stored score s, and
    p = exp(s) / sum exp(s) moves by about |s| times it (up to twice the largest |s| relative). fp16 stores 11
    significant bits (rounding 2**-11, ~0.05%) and keeps the GPU's much faster half-precision products; bf16 stores
    only 8 (2**-8, ~0.4%), where the fused kernel that gives the output keeps fp32 scores, so bf16 models get fp32
    scores. On CPU fp32 always: the probabilities are wanted in fp32, and there fp32 products are also faster than
    rounding them back to half precision for the value product.
    """
    if device.type != "cpu" and dtype == torch.float16 and not upcast:
        return torch.float16
    return torch.float32
