"""Model loading through the same code path as real weights, with no network."""

import hashlib
import os
import shutil

import pytest
import torch
from huggingface_hub import constants

from diffseg import DiffSeg, ModelLoadError
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
