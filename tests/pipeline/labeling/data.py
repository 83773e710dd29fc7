"""Input datasets for pipeline tests: real image files, WebDataset tars and Parquet files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.store.dataset import SCHEMA, OutputDataset
from pipeline.store.location import Location
from synthetic.photos import photo


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def good_images(count: int, start: int = 0) -> dict[str, bytes]:
    """`count` small photos of a few sizes and formats, named img-NNN.{jpg,png}."""
    sizes = [(96, 64), (64, 64), (80, 120)]
    images = {}
    for i in range(start, start + count):
        fmt, suffix = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        images[f"img-{i:03d}.{suffix}"] = encoded(photo(*sizes[i % 3], seed=i), fmt)
    return images


def bad_images() -> dict[str, str]:
    """Names of broken images (see `bad_image_bytes`) and words their error must contain."""
    return {"bad-truncated.jpg": "cannot decode", "bad-empty.png": "cannot decode image (empty file)",
            "bad-garbage.png": "cannot decode image (not an image format Pillow reads)",
            "bad-bomb.png": "exceeds the limit",
            "bad-animated.png": "frames", "bad-mode.tif": "unsupported image mode"}


BOMB_LIMIT = 1_500_000
"""`max_pixels` for jobs whose input holds `bad-bomb.png` (1,600 x 1,000 pixels)."""


def bad_image_bytes() -> dict[str, bytes]:
    frames = [photo(32, 32, seed=i) for i in range(3)]
    return {
        "bad-truncated.jpg": encoded(photo(64, 64), "JPEG")[:300],
        "bad-empty.png": b"",
        "bad-garbage.png": b"this is not an image",
        "bad-bomb.png": encoded(Image.new("L", (1600, 1000))),
        "bad-animated.png": encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "bad-mode.tif": encoded(Image.fromarray(np.zeros((16, 16), dtype=np.float32)), "TIFF"),
    }


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A WebDataset-style tar: every file a member, plus a caption member per image (not an image)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            for member, content in ((name, data), (name.rsplit(".", 1)[0] + ".txt", b"a caption")):
                info = tarfile.TarInfo(member)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def parquet_bytes(files: dict[str, bytes], style: str) -> bytes:
    """Parquet of images as `datasets` writes them (`image` struct of bytes and path) or as img2dataset
    does (`key` and `jpg` binary columns)."""
    if style == "datasets":
        column = pa.array([{"bytes": data, "path": name} for name, data in files.items()],
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.table({"image": column, "label": pa.array(range(len(files)))})
    else:
        table = pa.table({"key": list(files), "jpg": pa.array(list(files.values()), type=pa.binary())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=3)
    return buffer.getvalue()


def read_output(url: str) -> list[dict]:
    """Every row of the mask output at the fsspec URL `url`, all columns."""
    return list(OutputDataset(Location(url)).rows(SCHEMA.names))
