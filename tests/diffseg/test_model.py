"""Model loading through the same code path as real weights, with no network."""

import hashlib
import os
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler
from huggingface_hub import constants

from diffseg import DiffSeg, ModelLoadError, builtin
from diffseg.model import empty_prompt_embedding_xl, load_model
from synthetic.photos import photo

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_tiny_is_built_in_and_says_its_masks_are_meaningless(tiny):
    assert tiny.info["model"] == "tiny" and tiny.info["random_weights"] is True
    assert "meaningless" in tiny.info["note"]
    assert tiny.model.context.shape == (1, 77, 32)
    assert len(tiny.capture.layers) == 16


def test_a_loaded_model_keeps_only_the_vae_encoder(tiny_folder):
    loaded = DiffSeg.from_pretrained(str(tiny_folder), device="cpu")
    vae = loaded.model.vae
    assert vae.decoder is None and vae.post_quant_conv is None
    names = {name.split(".")[0] for name, _ in vae.named_parameters()}
    assert names == {"encoder", "quant_conv"}


def test_tiny_is_deterministic():
    first, second = DiffSeg.from_pretrained("tiny", device="cpu"), DiffSeg.from_pretrained("tiny", device="cpu")
    for a, b in zip(first.model.unet.parameters(), second.model.unet.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(first.model.context, second.model.context)


def test_a_saved_folder_loads_like_real_weights_and_gives_the_same_masks(tiny, tiny_folder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loaded = DiffSeg.from_pretrained(str(tiny_folder), device="cpu")
    assert loaded.info["source"] == "local" and loaded.info["model"] == str(tiny_folder.resolve())
    weights = tiny_folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert loaded.info["weights"]["unet/diffusion_pytorch_model.safetensors"] == \
        hashlib.sha256(weights.read_bytes()).hexdigest()
    images = [photo(96, 64, seed=1), photo(64, 80, seed=2)]
    # Exact: the same weights (safetensors round-trips fp32 bits) through the same computation in this process.
    for ours, theirs in zip(loaded.segment(images), tiny.segment(images)):
        assert torch.equal(ours, theirs)


def test_a_hub_id_loads_from_the_hub_cache_offline(tiny, tiny_folder, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--acme--tiny-sd"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(tiny_folder, snapshot)
    # As the Hub client stores it: the snapshot file is a link to a blob named by its sha256.
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (repo / "blobs").mkdir()
    weights.rename(repo / "blobs" / digest)
    weights.symlink_to(repo / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    loaded = DiffSeg.from_pretrained("acme/tiny-sd", device="cpu")
    assert loaded.info["source"] == "hub" and loaded.info["revision"] == COMMIT
    assert loaded.info["weights"]["unet/diffusion_pytorch_model.safetensors"] == digest
    image = photo(64, 64, seed=3)
    assert torch.equal(loaded.segment([image])[0], tiny.segment([image])[0])


def test_an_unreachable_hub_id_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as error:
        DiffSeg.from_pretrained("acme/not-there")
    message = str(error.value)
    assert "acme/not-there" in message and "local folder" in message and "\n" not in message


def test_a_missing_folder_is_one_clear_message(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        DiffSeg.from_pretrained(str(tmp_path / "nowhere"))


def test_a_folder_without_the_diffusers_layout_is_one_clear_message(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError) as error:
        DiffSeg.from_pretrained(str(tmp_path))
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


# SDXL family (SDXL, SSD-1B, Segmind-Vega), through the built-in tiny-xl model and a saved copy of it.


def test_a_saved_sdxl_folder_loads_like_real_weights_with_the_built_in_conditioning(tiny_xl, tiny_xl_folder):
    loaded = load_model(str(tiny_xl_folder))
    assert loaded.family == "sdxl" and loaded.info["source"] == "local"
    for part in ("unet", "vae"):
        weights = tiny_xl_folder / part / "diffusion_pytorch_model.safetensors"
        assert loaded.info["weights"][f"{part}/diffusion_pytorch_model.safetensors"] == \
            hashlib.sha256(weights.read_bytes()).hexdigest()
    # Exact: the same fp32 weights through the same computation in this process.
    assert torch.equal(loaded.context, tiny_xl.context)
    assert torch.equal(loaded.pooled, tiny_xl.pooled)


def test_the_sdxl_context_joins_both_text_encoders_and_the_pooled_embedding_is_the_second_ones():
    parts = builtin.build("tiny-xl")
    context, pooled = empty_prompt_embedding_xl((parts.tokenizer, parts.tokenizer_2),
                                                (parts.text_encoder, parts.text_encoder_2))
    widths = parts.text_encoder.config.hidden_size, parts.text_encoder_2.config.hidden_size
    assert widths == (16, 32) and context.shape == (1, 77, sum(widths))
    assert pooled.shape == (1, parts.text_encoder_2.config.projection_dim)
    # As the SDXL pipeline's encode_prompt(""): each encoder's penultimate hidden state, the second one's text_embeds.
    ids = parts.tokenizer("", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        first = parts.text_encoder(ids, output_hidden_states=True)
        second = parts.text_encoder_2(ids, output_hidden_states=True)
    assert torch.equal(context, torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1))
    assert not torch.equal(context[..., :16], first.last_hidden_state)
    assert torch.equal(pooled, second.text_embeds)


def test_sdxl_unet_inputs_condition_on_the_pooled_text_and_the_processed_size(tiny_xl):
    inputs = tiny_xl.unet_inputs(3, (96, 160))
    assert inputs["encoder_hidden_states"].shape == (3, 77, 48)
    added = inputs["added_cond_kwargs"]
    assert torch.equal(added["text_embeds"], tiny_xl.pooled.expand(3, -1))
    # original size (H, W), crop top-left (0, 0), target size (H, W), per image
    assert torch.equal(added["time_ids"], torch.tensor([[96.0, 160.0, 0.0, 0.0, 96.0, 160.0]] * 3))
    assert added["time_ids"].dtype == tiny_xl.unet.dtype


def test_an_sd_model_takes_the_context_only(tiny):
    model = tiny.model
    assert model.family == "sd" and model.pooled is None
    inputs = model.unet_inputs(2, (64, 96))
    assert inputs.keys() == {"encoder_hidden_states"} and inputs["encoder_hidden_states"].shape == (2, 77, 32)


def test_the_sdxl_unet_runs_with_its_inputs_and_uses_the_size_conditioning(tiny_xl):
    latents = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([50, 50])
    with torch.inference_mode():
        sample = tiny_xl.unet(latents, timestep, **tiny_xl.unet_inputs(2, (64, 128))).sample
        other_size = tiny_xl.unet(latents, timestep, **tiny_xl.unet_inputs(2, (128, 256))).sample
    assert sample.shape == latents.shape and torch.isfinite(sample).all()
    assert not torch.equal(sample, other_size)


def test_fp16_keeps_a_force_upcast_sdxl_vae_in_fp32(tiny_xl_folder):
    """fp16 weights run on CPU too, so the dtypes are checked directly. The VAE is not rounded through fp16 on
    the way: its weights are the file's fp32 ones."""
    half = load_model(str(tiny_xl_folder), dtype=torch.float16)
    assert half.unet.dtype == half.context.dtype == half.pooled.dtype == torch.float16
    assert half.vae.dtype == torch.float32 and half.vae.config.force_upcast
    built = builtin.build("tiny-xl").vae.encoder.state_dict()
    assert all(torch.equal(value, built[name]) for name, value in half.vae.encoder.state_dict().items())
    # bf16 has fp32's range: nothing to upcast, as in diffusers' pipelines.
    assert load_model("tiny-xl", dtype=torch.bfloat16).vae.dtype == torch.bfloat16


def test_an_sd_vae_follows_the_requested_dtype():
    """SD 1.x VAE configs carry `force_upcast` only as diffusers' default; SD pipelines keep them in fp16."""
    half = load_model("tiny", dtype=torch.float16)
    assert half.vae.config.force_upcast and half.vae.dtype == torch.float16


def test_loading_in_fp16_logs_no_notice_about_float32_modules_the_model_has_none_of(tiny_folder, caplog):
    """diffusers warns on every `to(dtype)` that modules kept in float32 could be cast, listing none for SD's UNet
    and VAE: the built-in model casts both, a folder its VAE (read in fp32)."""
    load_model("tiny", dtype=torch.float16)
    load_model(str(tiny_folder), dtype=torch.float16)
    assert not [message for message in caplog.messages if "should be kept in float32" in message]


def test_a_model_that_keeps_modules_in_float32_still_warns_when_cast(monkeypatch, caplog):
    monkeypatch.setattr(AutoencoderKL, "_keep_in_fp32_modules", ["quant_conv"])
    load_model("tiny", dtype=torch.float16)
    assert [record.levelname for record in caplog.records
            if "AutoencoderKL that should be kept in float32: ['quant_conv']" in record.getMessage()] == ["WARNING"]


def test_the_noise_schedule_is_ddim_with_trailing_spacing_from_the_folder_config(tiny_xl_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_xl_folder, folder)
    EulerDiscreteScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear").save_pretrained(
        folder / "scheduler")
    scheduler = load_model(str(folder)).scheduler
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.timestep_spacing == "trailing"
    assert scheduler.config.beta_schedule == "linear" and scheduler.config.beta_end == 0.02


def test_without_a_scheduler_config_the_noise_schedule_has_sd_betas(tiny_xl, tiny_folder, tiny_xl_folder):
    assert not (tiny_folder / "scheduler").exists()
    for scheduler in (load_model(str(tiny_folder)).scheduler, tiny_xl.scheduler):
        assert isinstance(scheduler, DDIMScheduler) and scheduler.config.timestep_spacing == "trailing"
        assert (scheduler.config.beta_schedule, scheduler.config.beta_start, scheduler.config.beta_end) == \
            ("scaled_linear", 0.00085, 0.012) and scheduler.config.num_train_timesteps == 1000
    # tiny_xl_folder ships SDXL's scheduler (Euler) with the same betas: the same noise levels.
    from_folder = load_model(str(tiny_xl_folder)).scheduler
    assert torch.equal(from_folder.alphas_cumprod, tiny_xl.scheduler.alphas_cumprod)


def test_an_sdxl_folder_without_its_second_text_encoder_is_one_clear_message(tiny_xl_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_xl_folder, folder)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelLoadError) as error:
        load_model(str(folder))
    message = str(error.value)
    assert str(folder) in message and "text_encoder_2/" in message and "\n" not in message


def test_ssd1b_random_has_the_published_ssd1b_architecture():
    """Checked on the meta device (shapes only, no memory): the full-size model is for benchmarks."""
    with torch.device("meta"):
        parts = builtin.build("ssd1b-random")
    unet = parts.unet
    assert sum(p.numel() for p in unet.parameters()) == 1_331_334_404  # segmind/SSD-1B: 5.33 GB of fp32 weights
    depths = [[len(a.transformer_blocks) for a in getattr(block, "attentions", [])] for block in unet.up_blocks]
    assert [[len(a.transformer_blocks) for a in block.attentions] for block in unet.down_blocks[1:]] == [[2, 2], [4, 4]]
    assert depths == [[4, 4, 10], [2, 1, 1], []]
    assert len(unet.mid_block.resnets) == 1 and not unet.mid_block.attentions
    assert unet.config.cross_attention_dim == 2048 == sum(e.config.hidden_size
                                                          for e in (parts.text_encoder, parts.text_encoder_2))
    assert unet.config.projection_class_embeddings_input_dim == 1280 + 6 * 256
    assert parts.text_encoder_2.config.projection_dim == 1280
    assert parts.vae.config.scaling_factor == 0.13025 and parts.vae.config.force_upcast
