"""DiffSeg in users' own Ray Data pipelines: a labeling job's output as a `ray.data.Dataset` (`read_masks`), and
`Labeler`, a step for `Dataset.map_batches` that labels images as the job does and gives the job's columns.

    import ray
    from pipeline.labeling.ray_data import Labeler, read_masks

    masks = read_masks("s3://bucket/masks/", decode=True)      # rows of the output, with `labels` arrays
    labeled = ray.data.read_images("s3://bucket/images/", include_paths=True).map_batches(
        Labeler, fn_constructor_kwargs={"model": "CompVis/stable-diffusion-v1-4", "id_column": "path"},
        compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray
from PIL import Image
from pyarrow.fs import FSSpecHandler, PyFileSystem

from diffseg import DiffSeg, DiffSegConfig, ImageError, stream
from diffseg.defaults import DEFAULT_MODEL, MAX_PIXELS
from diffseg.model import DTYPES
from diffseg.preprocess import PreparedImage

from ..store.dataset import SCHEMA, OutputDataset, Row, decode_mask
from ..store.location import Location, StorageError
from .worker import segmentation_row

COLUMNS = [name for name in SCHEMA.names if name != "source_uri"]
"""What `Labeler` adds to each row: the job's columns (`pipeline.store.dataset.SCHEMA`) but `source_uri`."""


def read_masks(output: str, storage_options: dict[str, Any] | None = None, decode: bool = False) -> ray.data.Dataset:
    """The rows of the labeling output at `output` (any fsspec URL), with the job's columns (`SCHEMA`), from its
    finished mask files: those with a `_done/` marker, so that a run still in progress or interrupted adds no
    partial file. With `decode`, each row also has `labels`, its `(H, W)` int64 label map, decoded when the
    dataset is consumed (None for an error row); without, `mask` stays PNG bytes (`output.decode_mask`).

    Raises:
        StorageError: `output` is not a labeling job's output, or has no finished mask file yet.
    """
    location = Location(output, storage_options or {})
    dataset = OutputDataset(location)
    dataset.manifest()
    files = dataset.finished_paths()
    if not files:
        raise StorageError(f"{location.url}: no finished mask file yet")
    # With the current schema: files written before segments had scores read with those fields null.
    masks = ray.data.read_parquet(files, filesystem=PyFileSystem(FSSpecHandler(location.fs)),
                                  schema=SCHEMA.remove_metadata())
    # The plan Ray Data logs as each execution starts is our reading's internals; the setting is this dataset's
    # own (Ray Data copies the context into each dataset it makes) and carries to the datasets made from it.
    masks.context.print_on_execution_start = False
    return masks.map(_with_labels) if decode else masks


def _with_labels(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "labels": None if row["mask"] is None else decode_mask(row["mask"])}


class Labeler:
    """A Ray Data step that labels a batch of images: `ds.map_batches(Labeler, fn_constructor_kwargs={...},
    compute=ray.data.ActorPoolStrategy(size=N), num_gpus=1, batch_size=B)`; one model replica per actor.

    Takes batches with an image column of encoded image bytes (any format the job reads) or decoded `(H, W, 3)` /
    `(H, W)` uint8 arrays (as `ray.data.read_images` gives them). Returns every input column but the image, plus
    the job's columns (`COLUMNS`): `image_id` (the `id_column`'s value as text, else the row's position in its
    batch), `width`, `height`, `mask` (label PNG), `num_segments`, `segments` (with `score` and `stability`),
    `status` and `error` (an image that cannot be decoded is a row with status "error", as in the job), `descriptors`
    (null) and `warning`.
    """

    def __init__(self, model: str = DEFAULT_MODEL, config: DiffSegConfig | None = None, image_column: str = "image",
                 id_column: str | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int | None = None, max_pixels: int = MAX_PIXELS) -> None:
        """
        Args:
            model: Hub id, local diffusers folder, or built-in name (`tiny`), as the job's `--model`.
            config: the algorithm's settings; the paper's by default.
            image_column: the column of images.
            id_column: a column whose values become `image_id`; None: positions in the batch.
            device: "cuda" or "cpu"; None: CUDA when Ray gave this instance a GPU.
            dtype: key of `diffseg.model.DTYPES`; None: float16 on CUDA, float32 on CPU.
            batch_size: images per UNet forward; None: `DiffSeg.default_batch_size`.
            max_pixels: larger images become error rows.
        """
        self.segmenter = DiffSeg.from_pretrained(model, config=config, device=device,
                                                 dtype=DTYPES[dtype] if dtype else None, max_pixels=max_pixels)
        self.image_column, self.id_column = image_column, id_column
        self.batch_size = batch_size or self.segmenter.default_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = batch[self.image_column]
        ids = [str(v) for v in batch[self.id_column]] if self.id_column else [str(i) for i in range(len(images))]
        items = [(image_id, self._prepared(image, image_id)) for image_id, image in zip(ids, images)]
        rows = [Row.failed(outcome.key, "", outcome.error.reason) if outcome.error is not None
                else segmentation_row(outcome.key, "", outcome.output)
                for outcome in stream(items, self._segment, self.batch_size)]
        passed = {name: pa.array(list(values)) for name, values in batch.items() if name != self.image_column}
        labeled = {name: pa.array([getattr(row, name) for row in rows], type=SCHEMA.field(name).type)
                   for name in COLUMNS}
        return pa.table({**passed, **labeled})

    def _prepared(self, image: Any, image_id: str) -> PreparedImage | ImageError:
        """`image` (bytes, or a decoded array) prepared for the model, or why it cannot be."""
        try:
            source = bytes(image) if isinstance(image, (bytes, bytearray, np.bytes_)) else _as_photo(image)
            return self.segmenter.prepare(source, name=image_id)
        except ImageError as error:
            return error
        except ValueError as error:
            return ImageError(image_id, str(error))

    def _segment(self, images: list[PreparedImage]) -> list[Any]:
        return self.segmenter.label_batch_scored(images, self.segmenter.forward_batch(images, self.batch_size))


def _as_photo(array: Any) -> Image.Image:
    """A decoded `(H, W, 3)` or `(H, W)` uint8 array as a PIL image (what `prepare` takes besides bytes)."""
    pixels = np.asarray(array)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected image bytes or an (H, W[, 3]) uint8 array, got {pixels.dtype} {pixels.shape}")
    return Image.fromarray(pixels)
