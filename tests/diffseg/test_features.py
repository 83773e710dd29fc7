"""DiffCut's features: one self-attention layer's output, from a UNet forward that stops right after it."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from diffseg import builtin
from diffseg.attention import SelfAttentionCapture
from diffseg.features import feature_layer, layer_features
from diffseg.model import LoadedModel, load_model
from tests.diffseg.rounding import assert_within, attention_bounds


@pytest.fixture(scope="module")
def tiny_sd() -> LoadedModel:
    """The tiny SD 1.x-layout model without a capture (the session's `tiny` segmenter has one installed)."""
    return load_model("tiny")


@pytest.fixture(params=["sd", "sdxl"])
def model(request, tiny_sd, tiny_xl) -> LoadedModel:
    return tiny_sd if request.param == "sd" else tiny_xl


def forward_inputs(model: LoadedModel, batch: int, height: int, width: int) -> tuple:
    """Seeded latents `(batch, 4, height, width)` in the UNet's dtype, DiffCut's timestep and the other inputs."""
    latents = torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(0)).to(model.unet.dtype)
    return latents, torch.full((batch,), 50), model.unet_inputs(batch, (8 * height, 8 * width))


def test_the_layers_are_those_of_the_official_code(tiny_sd, tiny_xl):
    """Official DiffCut: SD 1.4 `down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1`, SDXL family
    `down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1`."""
    sd, xl = tiny_sd.unet, tiny_xl.unet
    assert feature_layer(sd) is sd.down_blocks[2].attentions[1].transformer_blocks[0].attn1
    assert feature_layer(sd) is sd.down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1
    blocks = xl.down_blocks[2].attentions[1].transformer_blocks
    assert len(blocks) == 3 and feature_layer(xl) is blocks[-1].attn1 and feature_layer(xl) is not blocks[0].attn1
    assert feature_layer(xl) is xl.down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1


def test_ssd1b_takes_the_last_of_four_transformer_layers():
    with torch.device("meta"):
        unet = builtin.build("ssd1b-random").unet
    blocks = unet.down_blocks[2].attentions[1].transformer_blocks
    assert len(blocks) == 4 and feature_layer(unet) is blocks[3].attn1


def test_the_early_exit_gives_exactly_the_features_of_a_full_forward(model):
    latents, timestep, inputs = forward_inputs(model, 2, 16, 24)
    features = layer_features(model.unet, latents, timestep, **inputs)

    outputs = []
    handle = feature_layer(model.unet).register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        with torch.inference_mode():
            model.unet(latents, timestep, **inputs)
    finally:
        handle.remove()
    # Bit-identical: the same operations on the same inputs in this process, only what follows is skipped.
    (full,) = outputs
    assert features.shape == (2, 4, 6, full.shape[-1])
    assert torch.equal(features.reshape(full.shape), full)


def test_nothing_after_the_feature_layer_runs(model):
    unet = model.unet
    layer = feature_layer(unet)
    block = next(b for b in unet.modules() if getattr(b, "attn1", None) is layer)
    later = {"the layer's cross-attention": block.attn2, "mid block": unet.mid_block, "conv_out": unet.conv_out,
             **{f"up block {i}": up for i, up in enumerate(unet.up_blocks)}}
    started = []
    handles = [module.register_forward_pre_hook(lambda module, args, name=name: started.append(name))
               for name, module in later.items()]
    latents, timestep, inputs = forward_inputs(model, 1, 8, 8)
    try:
        layer_features(unet, latents, timestep, **inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert started == []
    # and leaves no hook behind
    assert not layer._forward_hooks and not unet.down_blocks[2].attentions[1]._forward_pre_hooks


def test_non_square_latents_give_the_transformers_grid(model):
    """The grid is read from the transformer's input: a quarter of the latent grid in both layouts."""
    latents, timestep, inputs = forward_inputs(model, 3, 24, 40)
    features = layer_features(model.unet, latents, timestep, **inputs)
    assert features.shape == (3, 6, 10, feature_layer(model.unet).to_out[0].out_features)
    assert features.dtype == model.unet.dtype


def test_features_are_in_the_model_dtype():
    model = load_model("tiny-xl", dtype=torch.bfloat16)
    latents, timestep, inputs = forward_inputs(model, 1, 8, 8)
    features = layer_features(model.unet, latents, timestep, **inputs)
    assert features.dtype == torch.bfloat16 and torch.isfinite(features).all()


@pytest.mark.parametrize("name", ["tiny", "tiny-xl"])
def test_with_the_diffseg_capture_installed_the_features_are_the_stock_output_of_the_layer(name):
    """The capture's processor replaces the stock one on every self-attention layer, the feature layer included.
    Its output must be the stock output of the same input, within the worst-case fp32 rounding bound of two
    evaluations of that layer (`tests.diffseg.rounding`; compared on the same input so that the bound holds on
    any kernels, without the amplification of rounding through the layers before)."""
    model = load_model(name)  # its own copy: the capture stays installed on the UNet
    capture = SelfAttentionCapture(model.unet)
    layer = feature_layer(model.unet)
    assert layer in capture.layers and layer.processor is capture.layers[0].processor
    latents, timestep, inputs = forward_inputs(model, 2, 16, 24)
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
    try:
        features = layer_features(model.unet, latents, timestep, **inputs)
    finally:
        handle.remove()
    ((hidden, output),) = seen
    assert torch.equal(features.reshape(output.shape), output)
    with torch.inference_mode():
        stock = AttnProcessor2_0()(layer, hidden)
    assert_within(output, stock, attention_bounds(layer, hidden).output)


def test_a_unet_of_another_layout_is_refused():
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=4)
    with pytest.raises(ValueError, match="SD 1.x layout"):
        feature_layer(unet)
