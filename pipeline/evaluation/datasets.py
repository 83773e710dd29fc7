"""Labeled evaluation datasets, read from the user's own copy (a local folder or any fsspec URL).

Nothing is downloaded. The expected layouts are the ones the datasets unpack to:

- COCO-Stuff-27: `ROOT/images/val2017/*.jpg` (COCO val2017) and `ROOT/annotations/val2017/*.png`
  (`stuffthingmaps_trainval2017`: per-pixel COCO-Stuff class 0..181, 255 unlabeled), as the COCO-Stuff
  instructions unzip them. The 182 fine classes are mapped to the 27 coarse categories of the COCO-Stuff
  hierarchy (12 thing and 15 stuff supercategories); 255 and unused ids are ignored.
- Cityscapes: `ROOT/leftImg8bit/val/CITY/NAME_leftImg8bit.png` and `ROOT/gtFine/val/CITY/NAME_gtFine_labelIds.png`;
  label ids 7..33 become classes 0..26, every other id is ignored.

Images are matched to predictions by their join key: the file name without folders and extension.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..store.inputs import IMAGE_SUFFIXES, InputError
from ..store.location import Location

IGNORE = -1
"""Class id of pixels that are not scored."""

COCO_STUFF_27: dict[str, tuple[int, ...]] = {
    # thing supercategories
    "electronic": tuple(range(71, 77)),
    "appliance": tuple(range(77, 83)),
    "food-things": tuple(range(51, 61)),
    "furniture-things": tuple(range(61, 71)),
    "indoor": tuple(range(83, 91)),
    "kitchen": tuple(range(43, 51)),
    "accessory": tuple(range(25, 33)),
    "animal": tuple(range(15, 25)),
    "outdoor": tuple(range(9, 15)),
    "person": (0,),
    "sports": tuple(range(33, 43)),
    "vehicle": tuple(range(1, 9)),
    # stuff supercategories
    "ceiling": (101, 102),
    "floor": (100, 113, 114, 115, 116, 117),
    "food-stuff": (120, 121, 152, 169),
    "furniture-stuff": (97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164),
    "raw-material": (99, 131, 138, 142),
    "textile": (91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167),
    "wall": tuple(range(170, 177)),
    "window": (179, 180),
    "building": (94, 95, 127, 150, 157, 165),
    "ground": (110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158),
    "plant": (93, 96, 118, 123, 128, 133, 141, 162, 168),
    "sky": (105, 156),
    "solid": (126, 134, 149, 159, 161, 181),
    "structural": (98, 112, 137, 145, 163),
    "water": (119, 147, 154, 177, 178),
}
"""The 27 coarse classes of COCO-Stuff-27, in the order of the IIC / PiCIE / STEGO line of work, each with its
fine `stuffthingmaps` ids (COCO-Stuff id - 1)."""

CITYSCAPES_27 = ("road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
                 "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
                 "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle")
"""Cityscapes classes 0..26: the label ids 7..33."""
CITYSCAPES_FIRST_ID = 7


@dataclass(frozen=True)
class Example:
    """One labeled image of a dataset."""

    image_id: str
    """Path of the image relative to the dataset's image folder (e.g. `frankfurt/..._leftImg8bit.png`)."""
    image: str
    """Key of the image file under the root."""
    label: str
    """Key of the label file under the root."""

    @property
    def key(self) -> str:
        """Join key with predictions: the image's file name without folders and extension."""
        return join_key(self.image_id)


@dataclass(frozen=True)
class LabeledDataset:
    """A dataset's examples and how to read them. `read_label` gives class ids 0..num_classes-1 or `IGNORE`."""

    name: str
    location: Location
    examples: tuple[Example, ...]
    class_names: tuple[str, ...]
    kl_threshold: float
    """The paper's merge threshold for this dataset."""
    lookup: np.ndarray = field(repr=False)
    """`(256,)` int64: stored label value -> class id or `IGNORE`."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_image(self, example: Example) -> bytes:
        return self.location.read(example.image)

    def read_label(self, example: Example) -> np.ndarray:
        """`(H, W)` int64 class ids of the example, as stored (no orientation applied).

        Raises:
            ValueError: the label file is not an 8-bit single-channel image.
            OSError: it cannot be read.
        """
        try:
            with Image.open(io.BytesIO(self.location.read(example.label))) as image:
                if image.mode != "L":
                    raise ValueError(f"{example.label}: label image has mode {image.mode}, not 8-bit single-channel")
                return self.lookup[np.asarray(image)]
        except Image.UnidentifiedImageError:
            raise ValueError(f"{example.label}: cannot decode the label image") from None


DATASETS = ("coco-stuff-27", "cityscapes")
SPLITS = {"coco-stuff-27": "val2017", "cityscapes": "val"}


def open_dataset(name: str, root: str, split: str | None = None, image_list: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> LabeledDataset:
    """The dataset `name` under `root`, optionally restricted to the images of `image_list`.

    Args:
        name: one of `DATASETS`.
        root: fsspec URL of the dataset's folder (see the module docstring for its layout).
        split: folder of the split; default `val2017` (COCO-Stuff) or `val` (Cityscapes).
        image_list: fsspec URL of a text file with one image per line (file name, with or without folders and
            extension, e.g. the curated 2,175-image COCO-Stuff-27 list); blank lines and `#` comments skipped.
            Default: every labeled image of the split, in sorted order.

    Raises:
        InputError: unknown dataset, nothing found, images without labels, or listed images that do not exist.
    """
    if name not in DATASETS:
        raise InputError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    location = Location(root, storage_options or {})
    split = split or SPLITS[name]
    if name == "coco-stuff-27":
        examples = _pairs(location, f"images/{split}", f"annotations/{split}", "", ".png")
        class_names, kl_threshold, lookup = tuple(COCO_STUFF_27), 1.1, _coco_stuff_lookup()
    else:
        examples = _pairs(location, f"leftImg8bit/{split}", f"gtFine/{split}", "_leftImg8bit", "_gtFine_labelIds.png")
        class_names, kl_threshold, lookup = CITYSCAPES_27, 0.9, _cityscapes_lookup()
    if image_list is not None:
        examples = _listed(examples, image_list, storage_options or {})
    return LabeledDataset(name, location, tuple(examples), class_names, kl_threshold, lookup)


def join_key(image_id: str) -> str:
    """The file name of an image id without folders and extension: how images, lists and predictions meet."""
    return posixpath.splitext(posixpath.basename(image_id.rstrip("/")))[0]


def _pairs(location: Location, images: str, labels: str, image_marker: str, label_suffix: str) -> list[Example]:
    """Every image under `images` (whose stem ends with `image_marker`) with its label under `labels`, at the
    same relative folder, named stem-without-marker + `label_suffix`."""
    image_keys = sorted(key for key in location.files(images)
                        if posixpath.splitext(key)[1].lower() in IMAGE_SUFFIXES
                        and posixpath.splitext(key)[0].endswith(image_marker))
    if not image_keys:
        raise InputError(f"no images under {location.uri(images)} (is --root the dataset's folder?)")
    label_keys = set(location.files(labels))
    examples, missing = [], []
    for key in image_keys:
        relative = key[len(images) + 1:]
        stem = posixpath.splitext(relative)[0].removesuffix(image_marker)
        label = f"{labels}/{stem}{label_suffix}"
        if label in label_keys:
            examples.append(Example(relative, key, label))
        else:
            missing.append(label)
    if missing:
        raise InputError(f"{len(missing)} image(s) have no label file, e.g. {location.uri(missing[0])}")
    return examples


def _listed(examples: Sequence[Example], image_list: str, storage_options: dict[str, Any]) -> list[Example]:
    listing = Location(image_list, storage_options)
    try:
        text = listing.fs.cat_file(listing.root).decode()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{image_list}: cannot read the image list ({error})") from None
    wanted = [join_key(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    by_key = {example.key: example for example in examples}
    missing = [key for key in wanted if key not in by_key]
    if missing:
        raise InputError(f"{image_list}: {len(missing)} listed image(s) are not in the dataset, e.g. {missing[0]!r}")
    if not wanted:
        raise InputError(f"{image_list}: the image list is empty")
    return [by_key[key] for key in dict.fromkeys(wanted)]


def _coco_stuff_lookup() -> np.ndarray:
    lookup = np.full(256, IGNORE, dtype=np.int64)
    for coarse, fine in enumerate(COCO_STUFF_27.values()):
        lookup[list(fine)] = coarse
    return lookup


def _cityscapes_lookup() -> np.ndarray:
    lookup = np.full(256, IGNORE, dtype=np.int64)
    lookup[CITYSCAPES_FIRST_ID:CITYSCAPES_FIRST_ID + len(CITYSCAPES_27)] = np.arange(len(CITYSCAPES_27))
    return lookup
