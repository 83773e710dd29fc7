"""Labeled datasets in the folder layouts the real ones unpack to (COCO-Stuff, Cityscapes), for evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from synthetic.photos import photo


def regions_label(width: int, height: int, values: tuple[int, ...], seed: int) -> np.ndarray:
    """`(height, width)` uint8 label: vertical bands, one per value, at random cut points."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(4, width - 4), len(values) - 1, replace=False))
    band = np.searchsorted(cuts, np.arange(width), side="right")
    return np.tile(np.asarray(values, dtype=np.uint8)[band], (height, 1))


def coco_stuff(root: Path, sizes: tuple[tuple[int, int], ...] = ((96, 64), (64, 80), (72, 72))) -> list[str]:
    """COCO-Stuff layout: images/val2017/ID.jpg, annotations/val2017/ID.png with fine ids (255 unlabeled).
    Returns the image ids in sorted order."""
    ids = []
    for i, (width, height) in enumerate(sizes):
        image_id = f"{139 + i * 1000:012d}"
        (root / "images" / "val2017").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "val2017").mkdir(parents=True, exist_ok=True)
        photo(width, height, seed=i).save(root / "images" / "val2017" / f"{image_id}.jpg")
        label = regions_label(width, height, (0, 156, 123, 255), seed=i)  # person, sky-other, grass, unlabeled
        Image.fromarray(label).save(root / "annotations" / "val2017" / f"{image_id}.png")
        ids.append(image_id)
    return ids


def cityscapes(root: Path, cities: tuple[str, ...] = ("frankfurt", "lindau")) -> list[str]:
    """Cityscapes layout: leftImg8bit/val/CITY/NAME_leftImg8bit.png, gtFine/val/CITY/NAME_gtFine_labelIds.png.
    Returns the image ids (CITY/NAME_leftImg8bit.png)."""
    ids = []
    for i, city in enumerate(cities):
        name = f"{city}_000000_{i:06d}"
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        photo(128, 64, seed=10 + i).save(root / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png")
        label = regions_label(128, 64, (7, 23, 26, 0), seed=i)  # road, sky, car, unlabeled
        Image.fromarray(label).save(root / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png")
        Image.fromarray(label).save(root / "gtFine" / "val" / city / f"{name}_gtFine_color.png")
        ids.append(f"{city}/{name}_leftImg8bit.png")
    return ids
