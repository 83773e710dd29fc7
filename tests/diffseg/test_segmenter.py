"""DiffSeg end to end with the built-in tiny model."""

import pytest
import torch

from diffseg import DiffSeg, DiffSegConfig
from diffseg.segmenter import GPU_BATCH_SIZE, device_memory_budget, memory_per_image
from synthetic.photos import photo


def test_masks_have_each_images_original_size(tiny, tmp_path):
    path = tmp_path / "odd.png"
    photo(333, 517, seed=1).save(path)
    masks = tiny.segment([path, photo(200, 120, seed=2)])
    assert [tuple(m.shape) for m in masks] == [(517, 333), (120, 200)]
    assert all(m.dtype == torch.uint8 and m.min() == 0 for m in masks)
    assert int(masks[0].max()) > 0  # the tiny model's sharpened attention gives several segments


def test_center_mode_returns_the_square():
    segmenter = DiffSeg.from_pretrained("tiny", config=DiffSegConfig(crop="center", resolution=128), device="cpu")
    (mask,) = segmenter.segment([photo(333, 517)])
    assert mask.shape == (128, 128)


def test_a_bad_image_is_refused_by_name(tiny):
    with pytest.raises(ValueError, match="^tiny.png: image of 1x1"):
        tiny.prepare(photo(1, 1), name="tiny.png")


def test_results_do_not_depend_on_batch_companions_or_order(tiny):
    a, b, c, d = photo(192, 128, seed=3), photo(192, 128, seed=4), photo(128, 192, seed=5), photo(192, 128, seed=6)
    first = tiny.segment([a], batch_size=2)[0]  # padded: [a, a]
    second = tiny.segment([d, a], batch_size=2)[1]
    assert int(first.max()) > 1
    # Exact at the same row of a batch: short batches are padded, so every forward has the same shape and runs the
    # same kernels, and a row's values never meet another row's. (Another row may round differently: some BLAS
    # kernels, e.g. MKL's SSE4.2 ones, treat the rows of a small matrix product differently; see the next test.)
    for images, index, alone in [([a, b], 0, first), ([b, a], 1, second), ([c, b, a], 2, second),
                                 ([b, c, a, b], 2, second)]:
        assert torch.equal(tiny.segment(images, batch_size=2)[index], alone)


def test_an_images_attention_at_another_row_of_a_batch_differs_by_rounding_only(tiny):
    a, b = (tiny.prepare(photo(192, 128, seed=seed)).pixels for seed in (3, 4))
    for first, second in zip(tiny.attention(torch.stack([a, b])), tiny.attention(torch.stack([b, a]))):
        # Every query row is a distribution over the keys; compare rows by their L1 distance (at most 2).
        moved = (first[0] - second[1]).abs().sum(dim=(-2, -1))
        other = (first[0] - second[0]).abs().sum(dim=(-2, -1))
        # Not a worst-case bound (rounding reaching the maps through the whole UNet has no closed form): 0.01
        # sits 10x above the largest rounding seen (9e-4, rows of a batch rounded apart by MKL's SSE4.2 kernels)
        # and 100x below the distance to another image's rows (over 1.2 for b's), which must stay far above it.
        tolerance = 0.01
        assert float(moved.max()) <= tolerance and float(other.min()) > 10 * tolerance


def test_results_are_deterministic(tiny):
    image = photo(160, 96, seed=6)
    assert torch.equal(tiny.segment([image])[0], tiny.segment([image])[0])


def test_images_are_batched_by_processing_size(tiny, monkeypatch):
    shapes = []
    original = tiny.attention
    monkeypatch.setattr(tiny, "attention", lambda pixels: shapes.append(tuple(pixels.shape)) or original(pixels))
    images = [photo(192, 128, seed=i) for i in range(3)] + [photo(128, 192, seed=9)]
    masks = tiny.segment(images, batch_size=2)
    assert sorted(shapes) == [(2, 3, 320, 512)] * 2 + [(2, 3, 512, 320)]
    assert [tuple(m.shape) for m in masks] == [(128, 192)] * 3 + [(192, 128)]


def test_provenance_names_model_settings_device_and_dtype(tiny):
    info = tiny.info
    assert info["config"] == DiffSegConfig().to_dict()
    assert info["config_hash"] == DiffSegConfig().config_hash()
    assert (info["device"], info["dtype"]) == ("cpu", "float32")


def test_bfloat16_runs_with_fp32_attention():
    segmenter = DiffSeg.from_pretrained("tiny", device="cpu", dtype=torch.bfloat16)
    maps = segmenter.attention(torch.zeros(1, 3, 64, 64))
    assert all(m.dtype == torch.float32 for m in maps)
    (mask,) = segmenter.segment([photo(80, 64)])
    assert mask.shape == (64, 80)


def test_segmenters_built_on_one_model_share_its_capture(tiny):
    other = DiffSeg(tiny.model, DiffSegConfig(kl_threshold=0.5))
    image = photo(128, 96, seed=7)
    assert other.capture is tiny.capture
    assert tiny.segment([image])[0].shape == other.segment([image])[0].shape == (96, 128)


GIB = 2**30
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_memory_per_image_grows_with_the_pixels_and_the_vae_precision():
    half, full = torch.float16, torch.float32
    # SDXL at 1024 px sees SD's token grids at 512 px: only the VAE, with 4x the pixels, costs more (0.3125 GiB
    # per image in half precision at 512 px, 1.25 GiB at 1024 px).
    grown = memory_per_image("diffseg", "sdxl", 1024, half) - memory_per_image("diffseg", "sd", 512, half)
    assert grown == (1.25 - 0.3125) * GIB
    assert memory_per_image("diffseg", "sd", 1024, half) == 4 * memory_per_image("diffseg", "sd", 512, half)
    # SDXL's fp32 VAE at 1024 px needs about 2.5 GiB per image on its own, twice its fp16 share.
    vae_part = memory_per_image("diffcut", "sdxl", 1024, full) - memory_per_image("diffcut", "sdxl", 1024, half)
    assert vae_part == 1.25 * GIB
    assert memory_per_image("diffcut", "sdxl", 1024, full) < memory_per_image("diffseg", "sdxl", 1024, full)


def test_the_batch_size_is_one_on_cpu_and_decided_at_load(tiny):
    assert tiny.default_batch_size == 1 and "default_batch_size" in vars(tiny)


@pytest.mark.gpu
@needs_cuda
def test_on_a_gpu_the_batch_size_fits_the_memory_free_at_load_and_stays_when_memory_is_taken():
    segmenter = DiffSeg.from_pretrained("tiny", device="cuda")
    per_image = memory_per_image("diffseg", "sd", 512, segmenter.model.vae.dtype)
    decided = segmenter.default_batch_size
    assert decided == max(1, min(GPU_BATCH_SIZE, device_memory_budget(segmenter.device) // per_image))
    taken = torch.empty(device_memory_budget(segmenter.device) // 2, dtype=torch.uint8, device="cuda")
    assert segmenter.default_batch_size == decided
    del taken


@pytest.mark.gpu
@needs_cuda
def test_a_process_share_of_the_gpu_bounds_the_memory_budget():
    device = torch.device("cuda")
    _, total = torch.cuda.mem_get_info(device)
    torch.cuda.set_per_process_memory_fraction(0.25, device)
    try:
        assert device_memory_budget(device) <= 0.25 * total - torch.cuda.memory_allocated(device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


@pytest.mark.gpu
@needs_cuda
def test_a_gpu_gives_the_cpus_label_maps_up_to_near_ties():
    images = [photo(192, 128, seed=seed) for seed in range(3)]
    cpu = DiffSeg.from_pretrained("tiny", device="cpu").segment(images, batch_size=2)
    gpu = DiffSeg.from_pretrained("tiny", device="cuda", dtype=torch.float32).segment(images, batch_size=2)
    for on_cpu, on_gpu in zip(cpu, gpu, strict=True):
        # Other kernels round differently, which moves a label only where two proposals nearly tie: along
        # segment borders, a few percent of the pixels at most.
        assert float((on_cpu == on_gpu).float().mean()) >= 0.95
