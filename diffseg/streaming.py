"""The one loop that segments a stream of images: prepared images (or why they could not be prepared) in, each
item's model output (or its error) out, in input order, the model run on batches of one processing size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .batching import batches
from .preprocess import ImageError, PreparedImage

Key = TypeVar("Key")
Output = TypeVar("Output")

WINDOW = 16
"""`stream`'s default window, in batch sizes: images that may wait behind one whose batch is not full."""


@dataclass(frozen=True)
class Outcome(Generic[Key, Output]):
    """What `stream` gives for one item: the model's output for its image, or its error."""

    key: Key
    """What the caller gave with the item (a file, a record, an index)."""
    image: PreparedImage | None
    """The prepared image; None for an error."""
    output: Output | None
    """`model`'s output for the image (a label map, attention maps, ...); None for an error."""
    error: ImageError | None = None
    """Why the item has no image; None when the model ran on it."""


def stream(items: Iterable[tuple[Key, PreparedImage | ImageError]],
           model: Callable[[list[PreparedImage]], Sequence[Output]], batch_size: int = 1,
           window: int | None = None) -> Iterator[Outcome[Key, Output]]:
    """Run `model` on the images of `items`, batched by processing size, and give each item's `Outcome` in
    input order.

    `items` is read lazily, and an outcome comes out as soon as it is known and all before it are out: an
    error at once, an image once its batch has run. A batch runs when it is full (`batches`), when `window`
    more images have arrived after its first one, or at the end of `items`. So whatever the mix of sizes,
    at most `window` images (and their outputs) are held back, besides the errors between them.

    Args:
        items: `(key, image)` pairs, where image is a `PreparedImage` or the `ImageError` saying why there is
            none (raised by `prepare`, or made by the caller for a file it could not read). Preparing is the
            caller's, which may do it ahead in a background thread.
        model: called with 1 to `batch_size` images of one processing size; returns one output per image, in
            order (e.g. `DiffSeg.segment_batch`). It runs in the thread iterating the stream; a caller that
            keeps the model on its own thread submits the call there and waits.
        batch_size: most images per `model` call.
        window: images that may arrive after an image before its batch runs short; None: `WINDOW` batch
            sizes. A batch run short moves the later images of its size to other rows of their batches,
            where the model may round differently (see `DiffSeg.forward_batch`); one size alone never
            runs short while `window >= batch_size - 1`.

    Raises:
        ValueError: `batch_size` or `window` under 1; and whatever `items` or `model` raise.
    """
    window = WINDOW * batch_size if window is None else window
    numbered = ((number, key, image) for number, (key, image) in enumerate(items))
    done: dict[int, Outcome[Key, Output]] = {}
    emitted = 0
    for batch in batches(numbered, _processing_size, batch_size, window):
        number, key, first = batch[0]
        if isinstance(first, ImageError):
            done[number] = Outcome(key, None, None, first)
        else:
            images = [image for _, _, image in batch]
            for (number, key, image), output in zip(batch, model(images), strict=True):
                done[number] = Outcome(key, image, output)
        while emitted in done:
            yield done.pop(emitted)
            emitted += 1


def _processing_size(item: tuple[int, object, PreparedImage | ImageError]) -> tuple[int, ...] | None:
    """The batching key of a numbered item: the shape of its pixels; None (not batched) for an error."""
    image = item[2]
    return None if isinstance(image, ImageError) else tuple(image.pixels.shape)
