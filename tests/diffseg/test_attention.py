"""Self-attention capture on a real diffusers UNet.

Captured and stock layers, or chunked and unchunked ones, are two fp32 evaluations of the same math: they are
compared on the same layer input, within the worst-case rounding bounds of `tests.diffseg.rounding`, so the
comparisons hold on any vendor's kernels and do not include the amplification of rounding through later layers.
"""

from collections import Counter

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from diffseg import builtin
from diffseg.attention import SelfAttentionCapture, score_dtype
from tests.diffseg.rounding import TINY, U, assert_within, attention_bounds, gamma

HEADS = 8
"""Heads of every self-attention layer of both built-in models."""


def unet_inputs(unet, height: int, width: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, height, width, generator=generator)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.full((batch,), 300), context


def self_attention(unet) -> Attention:
    """The first self-attention layer (finest grid)."""
    return next(m for m in unet.modules() if isinstance(m, Attention) and not m.is_cross_attention)


def check_against_stock(layers) -> Counter:
    """Hook `layers` so that each output of a forward is compared with the stock processor's output on the same
    input; returns the count of checked calls per token count (filled as the forward runs)."""
    stock, checked = AttnProcessor2_0(), Counter()

    def check(module, args, output):
        hidden = args[0]
        assert_within(output, stock(module, hidden), attention_bounds(module, hidden).output)
        checked[hidden.shape[1]] += 1

    for layer in layers:
        layer.register_forward_hook(check)
    return checked


@pytest.fixture
def unet():
    return builtin.build("tiny").unet


def test_a_captured_layer_computes_the_stock_output_and_probabilities(unet):
    layer = self_attention(unet)
    hidden = torch.randn(2, 96, layer.to_q.in_features, generator=torch.Generator().manual_seed(0))
    bounds = attention_bounds(layer, hidden)
    with torch.inference_mode():
        layer.set_processor(AttnProcessor2_0())
        expected = layer(hidden)
        q, k = layer.head_to_batch_dim(layer.to_q(hidden)), layer.head_to_batch_dim(layer.to_k(hidden))
        probs = layer.get_attention_scores(q, k).reshape(2, HEADS, 96, 96).mean(dim=1)
        capture = SelfAttentionCapture(torch.nn.ModuleList([layer]))
        captured = layer(hidden)
        (maps,) = capture.maps((8, 12))
    assert_within(captured, expected, bounds.output)
    # relative: two fp32 softmaxes and head means (bounds.maps); absolute: exp underflow below fp32's normals
    torch.testing.assert_close(maps.reshape(2, 96, 96), probs, rtol=bounds.maps(HEADS), atol=TINY)


def test_the_fused_path_computes_the_stock_output_and_the_same_maps(unet, monkeypatch):
    """GPUs take a layer's output from the fused kernel (SDPA) and compute probabilities for the capture only;
    forced here on CPU, it must give the stock output and exactly the maps of the reference path (the same
    probability computation)."""
    layer = self_attention(unet)
    hidden = torch.randn(2, 96, layer.to_q.in_features, generator=torch.Generator().manual_seed(0))
    capture = SelfAttentionCapture(torch.nn.ModuleList([layer]))
    with torch.inference_mode():
        reference = layer(hidden)
        (reference_maps,) = capture.maps((8, 12))
        monkeypatch.setattr("diffseg.attention.fused_output", lambda device: True)
        fused = layer(hidden)
        (fused_maps,) = capture.maps((8, 12))
        layer.set_processor(AttnProcessor2_0())
        stock = layer(hidden)
    assert torch.equal(fused, stock)
    assert_within(fused, reference, attention_bounds(layer, hidden).output)
    assert torch.equal(fused_maps, reference_maps)


def test_every_captured_layer_of_a_forward_computes_the_stock_output_of_its_input(unet):
    """The capture leaves each layer's output unchanged up to rounding, at every resolution and head size (the
    UNet's output then is too: no other module is touched, see the next test)."""
    latents, t, context = unet_inputs(unet, 16, 24)
    capture = SelfAttentionCapture(unet)
    checked = check_against_stock(capture.layers)
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
    assert checked == {384: 5, 96: 5, 24: 5, 6: 1}


def test_only_self_attention_layers_are_replaced(unet):
    capture = SelfAttentionCapture(unet)
    attention = [m for m in unet.modules() if isinstance(m, Attention)]
    assert len(capture.layers) == 16
    assert all(m.processor is not capture.layers[0].processor for m in attention if m.is_cross_attention)
    assert len({id(m.processor) for m in capture.layers}) == 1


def test_captured_maps_have_every_resolution_and_are_distributions(unet):
    capture = SelfAttentionCapture(unet)
    latents, t, context = unet_inputs(unet, 16, 24, batch=3)
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
    maps = capture.maps((16, 24))
    assert [tuple(m.shape) for m in maps] == [(3, h, w, h, w) for h, w in [(16, 24), (8, 12), (4, 6), (2, 3)]]
    for m in maps:
        keys = m.shape[-1] * m.shape[-2]
        assert m.dtype == torch.float32
        # Softmax normalizes each row to 1 within gamma(N) + U whatever its exp's errors; the mean over 8 heads
        # x at most 5 layers and its division add gamma(42) + U; this check's own sum over N keys gamma(N).
        atol = 2 * gamma(keys) + gamma(HEADS * 5 + 2) + 2 * U
        torch.testing.assert_close(m.sum(dim=(-2, -1)), torch.ones(m.shape[:3]), atol=atol, rtol=0)


def test_captured_maps_are_the_layer_mean_of_head_mean_softmax(unet):
    """Recompute the 8x12 map from the inputs its 5 layers saw in the same forward."""
    latents, t, context = unet_inputs(unet, 16, 24, batch=1)
    capture = SelfAttentionCapture(unet)
    expected, bounds = [], []

    def recompute(module, args):
        hidden = args[0]
        if hidden.shape[1] == 96:
            q = module.head_to_batch_dim(module.to_q(hidden))
            k = module.head_to_batch_dim(module.to_k(hidden))
            expected.append(module.get_attention_scores(q, k).mean(dim=0))
            bounds.append(attention_bounds(module, hidden))

    for layer in capture.layers:
        layer.register_forward_pre_hook(recompute)
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
    assert len(expected) == 5
    # Each layer's probabilities within its own bound; the capture adds all 40 head maps, the recomputation 8 per
    # layer and then 5 layers: the layer mean is within the largest bound, with sums of up to 40 terms.
    rtol = max(b.maps(HEADS * 5) for b in bounds)
    torch.testing.assert_close(capture.maps((16, 24))[1].reshape(96, 96), sum(expected) / 5, rtol=rtol, atol=TINY)


def test_chunking_over_queries_does_not_change_what_a_layer_computes(unet, monkeypatch):
    layer, tokens, rows = self_attention(unet), 256, 7
    hidden = torch.randn(2, tokens, layer.to_q.in_features, generator=torch.Generator().manual_seed(1))
    bounds = attention_bounds(layer, hidden)
    capture = SelfAttentionCapture(torch.nn.ModuleList([layer]))
    chunks, softmax = [], torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda scores, *a, **k: chunks.append(scores.shape[2]) or
                        softmax(scores, *a, **k))
    with torch.inference_mode():
        whole = layer(hidden)
        (whole_maps,) = capture.maps((16, 16))
        assert chunks == [tokens]
        # 7 query rows per chunk: 36 chunks and a last one of 4 rows
        monkeypatch.setattr("diffseg.attention.CHUNK_ELEMENTS", 2 * HEADS * tokens * rows)
        chunks.clear()
        chunked = layer(hidden)
        (chunked_maps,) = capture.maps((16, 16))
    assert chunks == [rows] * 36 + [4]
    assert_within(chunked, whole, bounds.output)
    torch.testing.assert_close(chunked_maps, whole_maps, rtol=bounds.maps(HEADS), atol=TINY)


def test_maps_without_a_forward_is_an_error(unet):
    with pytest.raises(RuntimeError):
        SelfAttentionCapture(unet).maps((16, 16))


@pytest.mark.parametrize(("device", "dtype", "upcast", "expected"), [
    ("cuda", torch.bfloat16, False, torch.float32),
    ("cuda", torch.float16, False, torch.float16),
    ("cuda", torch.float16, True, torch.float32),
    ("cuda", torch.float32, False, torch.float32),
    ("cpu", torch.bfloat16, False, torch.float32),
    ("cpu", torch.float16, False, torch.float32),
    ("cpu", torch.float32, False, torch.float32),
])
def test_scores_are_fp32_except_for_fp16_models_on_a_gpu(device, dtype, upcast, expected):
    assert score_dtype(torch.device(device), dtype, upcast) == expected


def gpu_math(monkeypatch) -> None:
    """Make layers on CPU run the GPU path: output from the fused kernel, scores in the dtype a GPU would use."""
    on_gpu = score_dtype
    monkeypatch.setattr("diffseg.attention.fused_output", lambda device: True)
    monkeypatch.setattr("diffseg.attention.score_dtype",
                        lambda device, dtype, upcast=False: on_gpu(torch.device("cuda"), dtype, upcast))


def bf16_maps_against_exact(layer: Attention, hidden: torch.Tensor) -> float:
    """Capture `layer`'s (B, N, N) maps on `hidden` and return their largest error relative to the fp32 bound:
    |map - exact| / (rtol * exact + TINY), exact the fp64 head mean of softmax of the layer's own bf16 q and k."""
    tokens = hidden.shape[1]
    rtol = attention_bounds(layer, hidden).maps(HEADS)  # two fp32 evaluations: conservative against an exact one
    capture = SelfAttentionCapture(torch.nn.ModuleList([layer]))
    with torch.inference_mode():
        q = layer.head_to_batch_dim(layer.to_q(hidden)).double()
        k = layer.head_to_batch_dim(layer.to_k(hidden)).double()
        exact = (q @ k.transpose(1, 2) * layer.scale).softmax(dim=-1).reshape(-1, HEADS, tokens, tokens).mean(dim=1)
        layer(hidden)
        (maps,) = capture.maps((8, 12))
    error = (maps.reshape(exact.shape).double() - exact).abs() / (rtol * exact + TINY)
    return float(error.max())


def bf16_layer(unet) -> tuple[Attention, torch.Tensor]:
    """The first self-attention layer in bf16, and a bf16 input for it."""
    layer = self_attention(unet).to(torch.bfloat16)
    return layer, torch.randn(2, 96, layer.to_q.in_features, generator=torch.Generator().manual_seed(0)).bfloat16()


@pytest.mark.parametrize("on_gpu", [False, True], ids=["cpu path", "gpu path"])
def test_a_bf16_layer_captures_probabilities_of_fp32_scores(unet, monkeypatch, on_gpu):
    """A bf16 model's q and k are bf16, but its scores are not rounded to bf16 for the capture: the maps are within
    the fp32 rounding bound of the exact probabilities of those q and k."""
    if on_gpu:
        gpu_math(monkeypatch)
    assert bf16_maps_against_exact(*bf16_layer(unet)) <= 1


def test_bf16_scores_miss_the_fp32_bound(unet, monkeypatch):
    """The GPU path with scores in the model's bf16 (the rule before): the bound of the previous test tells them
    apart. fp32 scores are off by about (d + 3) 2**-24 S (S = scale * max sum |q||k|, d the head dim); bf16 ones,
    which keep 8 significant bits, by up to 2**-8 |s| for each score s; p = exp(s) / sum exp(s) moves by up to
    twice the score error, relative. So bf16 scores miss the bound by up to 2**16 / (d + 3), 1000x and more here.
    """
    gpu_math(monkeypatch)
    monkeypatch.setattr("diffseg.attention.score_dtype", lambda device, dtype, upcast=False: dtype)
    assert bf16_maps_against_exact(*bf16_layer(unet)) > 1

@pytest.mark.integration
def test_full_size_sd15_unet_capture():
    """The real SD 1.5 layout: 5 layers at 64x64, 5 at 32x32, 5 at 16x16, 1 at 8x8, each computing the stock
    output of its input (the 64x64 ones in chunks of 1024 queries)."""
    unet = builtin.build("sd15-random").unet
    latents, t, context = unet_inputs(unet, 64, 64, batch=1)
    capture = SelfAttentionCapture(unet)
    checked = check_against_stock(capture.layers)
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
        maps = capture.maps((64, 64))
    assert checked == {4096: 5, 1024: 5, 256: 5, 64: 1}
    assert [m.shape[1] for m in maps] == [64, 32, 16, 8]
