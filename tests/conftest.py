import os

# Tests never reach the Hub: every model comes from memory, a temp folder or a temp Hub cache.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from diffseg import DiffSeg, builtin  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> DiffSeg:
    """The built-in tiny model, in memory, with default settings."""
    return DiffSeg.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny model written by `save_pretrained` in the standard diffusers layout."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    parts = builtin.build("tiny")
    parts.unet.save_pretrained(folder / "unet")
    parts.vae.save_pretrained(folder / "vae")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A synthetic RGB image with a few flat colored regions and mild noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    array = np.zeros((height, width, 3), dtype=np.float64)
    for color, (cy, cx) in zip(rng.integers(0, 255, (4, 3)), rng.uniform(0, 1, (4, 2))):
        inside = (ys / height - cy) ** 2 + (xs / width - cx) ** 2 < 0.08
        array[inside] = color
    array += rng.normal(0, 60, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="RGB")
