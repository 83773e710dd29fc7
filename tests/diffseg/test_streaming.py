"""`stream`: items in, each item's output or error out, in input order, the model run on same-size batches."""

import pytest
import torch

from diffseg import ImageError, stream
from diffseg.preprocess import PreparedImage

WIDE, TALL = (64, 128), (128, 64)


def image(name: str, size: tuple[int, int] = WIDE) -> PreparedImage:
    return PreparedImage(name, torch.zeros(3, *size), mask_size=size, original_size=size)


class Model:
    """A stand-in for the model: records the images of every call and labels each image by its name."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, images: list[PreparedImage]) -> list[str]:
        self.calls.append([image.name for image in images])
        return [f"mask of {image.name}" for image in images]


def test_every_item_comes_out_in_input_order_with_its_output_or_its_error():
    items = [("a", image("a")), ("b", image("b", TALL)), ("bad", ImageError("bad.png", "cannot decode image")),
             ("c", image("c")), ("d", image("d", TALL)), ("e", image("e")), ("late", ImageError(None, "gone"))]
    outcomes = list(stream(items, Model(), batch_size=2))
    assert [outcome.key for outcome in outcomes] == ["a", "b", "bad", "c", "d", "e", "late"]
    for outcome, (key, given) in zip(outcomes, items):
        if isinstance(given, ImageError):
            assert outcome.error is given and (outcome.image, outcome.output) == (None, None)
        else:
            assert (outcome.image, outcome.output, outcome.error) == (given, f"mask of {key}", None)
    assert (outcomes[2].error.name, outcomes[2].error.reason) == ("bad.png", "cannot decode image")
    assert str(outcomes[2].error) == "bad.png: cannot decode image" and str(outcomes[6].error) == "gone"


def test_the_model_gets_at_most_a_batch_of_one_processing_size_at_a_time():
    sizes = [WIDE, TALL, WIDE, WIDE, TALL, WIDE, WIDE, TALL]
    model = Model()
    list(stream([(i, image(f"{i}", size)) for i, size in enumerate(sizes)], model, batch_size=3))
    assert model.calls == [["0", "2", "3"], ["1", "4", "7"], ["5", "6"]]


def test_outcomes_come_out_as_soon_as_their_batch_has_run():
    consumed = []

    def items():
        for i in range(100):
            consumed.append(i)
            yield i, image(f"{i}") if i % 3 else ImageError(f"{i}", "broken")

    outcomes = stream(items(), Model(), batch_size=2)
    assert next(outcomes).error.reason == "broken"  # item 0: an error needs no batch
    assert consumed == [0]
    assert [next(outcomes).output for _ in range(3)] == ["mask of 1", "mask of 2", None]  # 1, 2: a batch; 3
    assert consumed == [0, 1, 2, 3]


def test_an_image_of_a_rare_size_waits_at_most_a_window_of_images():
    consumed = []

    def items():
        yield "rare", image("rare", TALL)
        for i in range(100):
            consumed.append(i)
            yield i, ImageError(f"{i}", "broken") if i % 2 else image(f"{i}")

    model = Model()
    outcomes = stream(items(), model, batch_size=4, window=8)
    first = next(outcomes)
    # Errors do not count: the rare image ran short when the 8th image after it (14) arrived.
    assert (first.key, first.output) == ("rare", "mask of rare") and len(consumed) == 15
    assert model.calls == [["0", "2", "4", "6"], ["8", "10", "12", "14"], ["rare"]]
    assert [outcome.key for outcome in outcomes] == list(range(100))


def test_images_of_one_size_never_run_short_before_the_end_with_the_default_window():
    model = Model()
    items = [(i, image(f"{i}") if i % 5 else ImageError(f"{i}", "broken")) for i in range(60)]
    list(stream(items, model, batch_size=4))
    assert [len(call) for call in model.calls] == [4] * 12


def test_a_model_that_returns_too_few_outputs_is_an_error():
    with pytest.raises(ValueError):
        list(stream([(0, image("0")), (1, image("1"))], lambda images: ["one"], batch_size=2))
