"""Self-attention capture on a real diffusers UNet."""

from collections import Counter

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from diffseg import builtin
from diffseg.attention import SelfAttentionCapture


def unet_inputs(unet, height: int, width: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, height, width, generator=generator)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.full((batch,), 300), context


def stock(unet) -> None:
    unet.set_attn_processor(AttnProcessor2_0())


@pytest.fixture
def unet():
    return builtin.build("tiny").unet


def test_a_captured_layer_computes_the_stock_output_and_probabilities(unet):
    layer = next(m for m in unet.modules() if isinstance(m, Attention) and not m.is_cross_attention)
    hidden = torch.randn(2, 96, layer.to_q.in_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        layer.set_processor(AttnProcessor2_0())
        expected = layer(hidden)
        q, k = layer.head_to_batch_dim(layer.to_q(hidden)), layer.head_to_batch_dim(layer.to_k(hidden))
        probs = layer.get_attention_scores(q, k).reshape(2, layer.heads, 96, 96).mean(dim=1)
        capture = SelfAttentionCapture(torch.nn.ModuleList([layer]))
        captured = layer(hidden)
        (maps,) = capture.maps((8, 12))
    torch.testing.assert_close(captured, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps.reshape(2, 96, 96), probs, atol=1e-7, rtol=1e-5)


def test_capture_does_not_change_the_unet_output(unet):
    latents, t, context = unet_inputs(unet, 16, 24)
    stock(unet)
    with torch.inference_mode():
        expected = unet(latents, t, encoder_hidden_states=context).sample
        SelfAttentionCapture(unet)
        captured = unet(latents, t, encoder_hidden_states=context).sample
    # fp32 rounding, amplified through 16 layers of the tiny model's deliberately sharp attention.
    torch.testing.assert_close(captured, expected, atol=1e-4, rtol=1e-4)


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
        assert m.dtype == torch.float32
        torch.testing.assert_close(m.sum(dim=(-2, -1)), torch.ones(m.shape[:3]))


def test_captured_maps_are_the_layer_mean_of_head_mean_softmax(unet):
    """Recompute the 8x12 map by hooking the stock layers and compare."""
    latents, t, context = unet_inputs(unet, 16, 24, batch=1)
    expected, count = torch.zeros(96, 96), 0

    def hook(module, args, kwargs, output):
        nonlocal expected, count
        hidden = args[0]
        if module.is_cross_attention or hidden.shape[1] != 96:
            return
        q = module.head_to_batch_dim(module.to_q(hidden))
        k = module.head_to_batch_dim(module.to_k(hidden))
        expected += module.get_attention_scores(q, k).mean(dim=0)
        count += 1

    stock(unet)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in unet.modules() if isinstance(m, Attention)]
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
    for handle in handles:
        handle.remove()
    capture = SelfAttentionCapture(unet)
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
    assert count == 5
    torch.testing.assert_close(capture.maps((16, 24))[1].reshape(96, 96), expected / count, atol=2e-5, rtol=1e-3)


def test_chunked_attention_equals_unchunked(unet, monkeypatch):
    latents, t, context = unet_inputs(unet, 16, 16, batch=1)
    capture = SelfAttentionCapture(unet)
    with torch.inference_mode():
        unet(latents, t, encoder_hidden_states=context)
        whole = capture.maps((16, 16))
        monkeypatch.setattr("diffseg.attention.CHUNK_ELEMENTS", 1000)
        unet(latents, t, encoder_hidden_states=context)
        chunked = capture.maps((16, 16))
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_maps_without_a_forward_is_an_error(unet):
    with pytest.raises(RuntimeError):
        SelfAttentionCapture(unet).maps((16, 16))


@pytest.mark.integration
def test_full_size_sd15_unet_capture():
    """The real SD 1.5 layout: 5 layers at 64x64, 5 at 32x32, 5 at 16x16, 1 at 8x8, output unchanged."""
    unet = builtin.build("sd15-random").unet
    latents, t, context = unet_inputs(unet, 64, 64, batch=1)
    stock(unet)
    counts = Counter()
    with torch.inference_mode():
        expected = unet(latents, t, encoder_hidden_states=context).sample
        capture = SelfAttentionCapture(unet)
        for layer in capture.layers:
            layer.register_forward_pre_hook(lambda module, args: counts.update([args[0].shape[1]]))
        captured = unet(latents, t, encoder_hidden_states=context).sample
        maps = capture.maps((64, 64))
    torch.testing.assert_close(captured, expected, atol=1e-4, rtol=1e-3)
    assert counts == {4096: 5, 1024: 5, 256: 5, 64: 1}
    assert [m.shape[1] for m in maps] == [64, 32, 16, 8]
