"""Scoring segmentations against a labeled dataset, the way the literature does (`diffseg.metrics`).

Two sources of segmentations:

- `score_model`: a model run here, image by image: DiffSeg, a K-Means baseline on the same attention, or DiffCut.
  Several variants (a sweep of merge or cut thresholds, say) share one UNet forward per image.
- `score_predictions`: the mask Parquet output of a labeling job, joined to the dataset on the image file
  name; the ground truth gets the geometry the job gave its images (whole image, or the paper's center crop).

Both give a `Report`: dataset-level scores per variant, one row per image and variant, and a few rendered
samples for people to look at. Images that cannot be scored (unreadable, no prediction, sizes that do not
match) are rows with `status = "error"` and are left out of the scores.
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from diffseg import DiffSeg, DiffSegConfig, ImageError, stream
from diffseg.methods import METHODS, spoken, variant_method
from diffseg.metrics import Evaluation, ImageScore
from diffseg.preprocess import PreparedImage, prepare, prepare_label
from diffseg.visualize import to_image

from ..display.pages import display_size, resize_nearest, spread
from ..store.dataset import OutputDataset, decode_mask, manifest_config
from ..store.location import Location
from ..store.prefetch import prefetch
from .choices import SCORED_METHODS
from .datasets import Example, LabeledDataset, join_key


@dataclass(frozen=True)
class Variant:
    """One scored setting: a method and the algorithm config it runs with."""

    name: str
    """How tables and files name it, e.g. `diffseg tau=0.9` or `kmeans-c K=6`."""
    method: str
    """One of `SCORED_METHODS`."""
    config: DiffSegConfig

    def config_for(self, classes: int) -> DiffSegConfig:
        """The config for an image whose ground truth has `classes` classes (only K-Means-S depends on it)."""
        if variant_method(self.method)[1].clusters_from_labels:
            return dataclasses.replace(self.config, num_clusters=max(1, classes))
        return self.config


def variants(method: str, config: DiffSegConfig, sweep: Sequence[float] | None = None) -> list[Variant]:
    """The variants to score: one for `method`, or one per threshold of `sweep` (the merge threshold of diffseg,
    the cut threshold of diffcut).

    Raises `ValueError` for an unknown method, or a sweep with a method that has no threshold.
    """
    if method not in SCORED_METHODS:
        raise ValueError(f"method must be one of {', '.join(SCORED_METHODS)}, got {method!r}")
    family, variant = variant_method(method)
    config = dataclasses.replace(config, method=family.name)
    if not sweep:
        return [Variant(_name(method, variant.settings(config)), method, config)]
    if family.threshold is None:
        with_threshold = [name for name, other in METHODS.items() if other.threshold is not None]
        raise ValueError(f"a threshold sweep applies to the {spoken(with_threshold, 'and')} methods only")
    configs = [dataclasses.replace(config, **{family.threshold: tau}) for tau in sweep]
    return [Variant(_name(method, variant.settings(each)), method, each) for each in configs]


def _name(method: str, settings: str) -> str:
    """`diffseg tau=1.1`, or the method alone when no settings name it."""
    return f"{method} {settings}" if settings else method


@dataclass
class Sample:
    """One image kept for the report, at display size: the photo, its classes, and each variant's prediction
    with every segment shown as the class it was matched to."""

    image_id: str
    photo: Image.Image
    label: np.ndarray
    """`(h, w)` class ids, -1 ignored."""
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    """Variant name -> `(h, w)` matched class per pixel, -1 where the segment matched no class of the image."""
    scores: dict[str, ImageScore] = field(default_factory=dict)


@dataclass
class Report:
    """What a scoring run found."""

    dataset: str
    class_names: tuple[str, ...]
    protocol: str
    source: dict[str, Any]
    """What was scored: the model's provenance, or the labeling job's output URL and manifest."""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Variant name -> `Evaluation.result()` plus `seconds` (model time: forwards and its post-processing)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One per image and variant: image_id, variant, status, error, accuracy, miou, pixels, classes, segments."""
    samples: list[Sample] = field(default_factory=list)
    images: int = 0
    """Images attempted."""
    failed: int = 0
    """Images that could not be scored (their rows say why)."""
    seconds: float = 0.0
    """Wall time of the run."""

    def summary(self) -> dict[str, Any]:
        """One JSON-ready line: per variant accuracy, mIoU, images scored and seconds; counts; wall time; and
        what was scored (`source`)."""
        return {"dataset": self.dataset, "protocol": self.protocol, "images": self.images, "failed": self.failed,
                "seconds": round(self.seconds, 3), "source": self.source,
                "results": {name: {"accuracy": _finite(r["accuracy"]), "miou": _finite(r["miou"]),
                                   "images": r["images"], "seconds": round(r["seconds"], 3)}
                            for name, r in self.results.items()}}


class _Scorer:
    """Accumulates a report: scores per variant, rows, and the samples at the chosen indices."""

    def __init__(self, report: Report, names: Sequence[str], num_classes: int, examples: Sequence[Example],
                 samples: int) -> None:
        self.report, self.samples = report, set(spread(len(examples), samples))
        self.order = {example.image_id: index for index, example in enumerate(examples)}
        self.evaluations = {name: Evaluation(num_classes, protocol=report.protocol) for name in names}
        self.seconds = dict.fromkeys(names, 0.0)
        self.pending: Sample | None = None
        self.owed = 0

    def start(self, index: int, example: Example, photo: Callable[[], Image.Image] | None,
              label: np.ndarray | None) -> None:
        """Begin an image; keep it as a sample if its index was picked, or if an earlier pick could not be shown
        (`photo` renders it on demand; None for an image that cannot be scored)."""
        self.report.images += 1
        self.pending = None
        if photo is None or label is None:
            self.owed += index in self.samples  # the next image that can be shown takes its place
        elif index in self.samples or self.owed:
            self.owed -= index not in self.samples
            size = display_size(label.shape)
            self.pending = Sample(example.image_id, photo().resize(size, Image.Resampling.BILINEAR),
                                  resize_nearest(label, size))
            self.report.samples.append(self.pending)

    def score(self, example: Example, name: str, prediction: Any, label: np.ndarray) -> None:
        score = self.evaluations[name].add(prediction, label)
        self.report.rows.append({"image_id": example.image_id, "variant": name, "status": "ok", "error": None,
                                 "accuracy": score.accuracy, "miou": score.miou, "pixels": score.pixels,
                                 "classes": score.classes, "segments": score.segments})
        if self.pending is not None:
            # Segments matched to classes absent from the image are false positives: shown as unmatched.
            shown = np.where(np.isin(score.segment_class, label), score.segment_class, -1)
            matched = shown[np.asarray(prediction)]
            self.pending.predictions[name] = resize_nearest(matched, self.pending.label.shape[::-1])
            self.pending.scores[name] = score

    def fail(self, example: Example, reason: str) -> None:
        self.report.failed += 1
        for name in self.evaluations:
            self.report.rows.append({"image_id": example.image_id, "variant": name, "status": "error",
                                     "error": reason, "accuracy": None, "miou": None, "pixels": None,
                                     "classes": None, "segments": None})

    def finish(self, started: float) -> Report:
        """The report, its rows and samples in dataset order (batching may have scored images out of order)."""
        self.report.rows.sort(key=lambda row: self.order[row["image_id"]])
        self.report.samples.sort(key=lambda sample: self.order[sample.image_id])
        self.report.results = {name: {**evaluation.result(), "seconds": self.seconds[name]}
                               for name, evaluation in self.evaluations.items()}
        self.report.seconds = time.perf_counter() - started
        return self.report


@dataclass
class _Loaded:
    index: int
    example: Example
    image: PreparedImage | None = None
    label: np.ndarray | None = None
    prediction: np.ndarray | None = None
    error: str | None = None


def score_model(segmenter: DiffSeg, dataset: LabeledDataset, scored: Sequence[Variant], batch_size: int = 1,
                limit: int | None = None, samples: int = 12, protocol: str = "per-image",
                progress: bool = True, label_size: int | None = None) -> Report:
    """Segment the first `limit` images of `dataset` (all by default) with `segmenter`'s model and score every
    variant of `scored` on them. Images are read and decoded in a background thread while the model works;
    each batch gets one UNet forward, shared by all variants.

    Args:
        segmenter: the model and its preprocessing (`segmenter.config` sets the method family, crop and
            resolution; each variant's config sets the rest).
        samples: images kept for the report, spread evenly over the dataset.
        protocol: "per-image" (the paper's) or "dataset" (see `diffseg.metrics`).
        label_size: score at `label_size` x `label_size`: the masks are made at that size and the ground truth
            resized to it by nearest neighbour (DiffCut's protocol: 128); None: at the masks' size.
    """
    started = time.perf_counter()
    size = (label_size, label_size) if label_size else None
    examples = dataset.examples[:limit]
    report = Report(dataset.name, dataset.class_names, protocol, source=segmenter.info)
    scorer = _Scorer(report, [v.name for v in scored], dataset.num_classes, examples, samples)

    def load() -> Iterator[tuple[_Loaded, PreparedImage | ImageError]]:
        for index, example in enumerate(examples):
            loaded = _Loaded(index, example)
            try:
                loaded.image = segmenter.prepare(dataset.read_image(example), name=example.image_id)
                loaded.label = prepare_label(dataset.read_label(example), loaded.image, size)
            except ImageError as error:
                yield loaded, error
            except (ValueError, OSError) as error:  # the dataset's files: unreadable, or a label that is not one
                yield loaded, ImageError(example.image_id, str(error))
            else:
                yield loaded, loaded.image

    def forward(images: list[PreparedImage]) -> list[tuple[Any, float]]:
        """Each image's forward output (attention maps or features), and its share of the forward's seconds."""
        begun = time.perf_counter()
        evidence = segmenter.forward_batch(images, batch_size)
        share = (time.perf_counter() - begun) / len(images)
        return [(output, share) for output in evidence]

    def run(item: _Loaded, evidence: Any, forward_seconds: float) -> None:
        classes = int(np.unique(item.label[item.label >= 0]).size)
        scorer.start(item.index, item.example, lambda: to_image(item.image.pixels), item.label)
        for variant in scored:
            begun = time.perf_counter()
            labels, = segmenter.label_batch([item.image], [evidence], variant.config_for(classes),
                                            [size or item.image.mask_size])
            scorer.seconds[variant.name] += time.perf_counter() - begun + forward_seconds
            scorer.score(item.example, variant.name, labels.numpy(), item.label)

    # Attention maps are large (some 70 MB an image at resolution 512) and stay on the model's device: a short
    # window keeps few waiting behind an image of a rarer size.
    outcomes = stream(prefetch(load, depth=4 * batch_size), forward, batch_size, window=4 * batch_size)
    with _bar(len(examples), progress) as bar:
        for outcome in outcomes:
            if outcome.error is not None:
                scorer.start(outcome.key.index, outcome.key.example, None, None)
                scorer.fail(outcome.key.example, outcome.error.reason)
            else:
                run(outcome.key, *outcome.output)
            bar.update()
    return scorer.finish(started)


def score_predictions(location: Location, dataset: LabeledDataset, limit: int | None = None, samples: int = 12,
                      protocol: str = "per-image", progress: bool = True, label_size: int | None = None) -> Report:
    """Score the masks of a labeling job's output against the first `limit` images of `dataset`.

    Masks are joined on the image file name without extension (`datasets.join_key`). The job's manifest
    gives the geometry its masks have (whole image or center crop, and the processing resolution), which the
    ground truth is given too. Images without a mask, or whose mask is an error row, count as failed.
    `label_size` scores at that size x size, both resized by nearest neighbour (see `score_model`).

    Raises:
        StorageError: `location` is not a labeling job's output, or its masks cannot be read.
    """
    started = time.perf_counter()
    size = (label_size, label_size) if label_size else None
    predictions = OutputDataset(location)
    manifest = predictions.manifest()
    config = manifest_config(manifest)
    if label_size and config.crop != "center":
        raise ValueError("a label size scores square masks: these predictions are of whole images")
    examples = dataset.examples[:limit]
    masks = _masks(predictions, [example.key for example in examples])
    # A pseudo-class output (jobs/cluster.py) holds class ids, not the method's per-image segments.
    classes = f" {manifest['classes']} classes" if manifest.get("kind") == "pseudo-classes" else ""
    name = f"{config.method}{classes} (predictions)"
    source = {"predictions": location.uri(""), "model": manifest.get("model"), "config": manifest.get("config")}
    report = Report(dataset.name, dataset.class_names, protocol, source=source)
    scorer = _Scorer(report, [name], dataset.num_classes, examples, samples)

    def load() -> Iterator[_Loaded]:
        for index, example in enumerate(examples):
            loaded = _Loaded(index, example)
            row = masks.get(example.key)
            try:
                if row is None:
                    raise ValueError(f"no mask for this image in {location.url}")
                if row["status"] != "ok":
                    raise ValueError(f"the labeling job could not label it: {row['error']}")
                loaded.image = prepare(dataset.read_image(example), config, name=example.image_id)
                loaded.label = prepare_label(dataset.read_label(example), loaded.image, size)
                loaded.prediction = decode_mask(row["mask"])
                if loaded.prediction.shape != loaded.image.mask_size:
                    height, width = loaded.image.mask_size
                    raise ValueError(f"mask is {loaded.prediction.shape[1]}x{loaded.prediction.shape[0]} pixels, "
                                     f"the ground truth {width}x{height}")
                if size:
                    loaded.prediction = resize_nearest(loaded.prediction, size[::-1])
            except ImageError as error:
                loaded.error = error.reason
            except (ValueError, OSError) as error:
                loaded.error = str(error)
            yield loaded

    with _bar(len(examples), progress) as bar:
        for item in prefetch(load, depth=16):
            photo = (lambda image=item.image: to_image(image.pixels)) if item.error is None else None
            scorer.start(item.index, item.example, photo, item.label)
            if item.error is not None:
                scorer.fail(item.example, item.error)
            else:
                scorer.score(item.example, name, item.prediction, item.label)
            bar.update()
    scorer.seconds[name] = time.perf_counter() - started
    return scorer.finish(started)


def _masks(predictions: OutputDataset, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The output's rows (mask, status, error) for the join keys wanted: ids are read first, then only the
    rows needed."""
    wanted = set(keys)
    positions: dict[str, int] = {}
    for position, image_id in enumerate(predictions.column("image_id")):
        key = join_key(image_id)
        if key in wanted:
            positions.setdefault(key, position)
    return dict(zip(positions, predictions.take(list(positions.values()), ["mask", "status", "error"])))


def _finite(value: float) -> float | None:
    """None for NaN (nothing scored), which JSON cannot hold."""
    return None if math.isnan(value) else value


def _bar(total: int, progress: bool) -> tqdm:
    return tqdm(total=total, unit="img", file=sys.stderr, disable=not progress, mininterval=1.0, dynamic_ncols=True)


SCORES_SCHEMA = pa.schema([("image_id", pa.string()), ("variant", pa.string()), ("status", pa.string()),
                           ("error", pa.string()), ("accuracy", pa.float64()), ("miou", pa.float64()),
                           ("pixels", pa.int64()), ("classes", pa.int32()), ("segments", pa.int32())])
"""Columns of the per-image scores file: one row per image and variant (see `Report.rows`)."""


def write_scores(report: Report, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write the report's per-image rows to `url` (any fsspec URL): Parquet if it ends with `.parquet`, else CSV."""
    table = pa.Table.from_pylist(report.rows, schema=SCORES_SCHEMA)
    buffer = io.BytesIO()
    if url.endswith(".parquet"):
        pq.write_table(table, buffer)
    else:
        pa_csv.write_csv(table, buffer)
    folder, name = url.rstrip("/").rsplit("/", 1) if "/" in url else (".", url)
    Location(folder, storage_options or {}).write(name, buffer.getvalue())
