"""A self-contained HTML page of an evaluation `Report`: the scores, and sample images side by side.

One file, `index.html` (see `pipeline.display.pages`): the score table, the IoU of every class, and for each sample
the photo, the ground truth and each variant's prediction as colored overlays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffseg.visualize import palette

from ..display.pages import UNMATCHED, failure_list, figure, paint, percent, text, write_page
from .scoring import Report, Sample

FAILED_LISTED = 100
"""Failed images named on the page (all of them are in the per-image scores)."""


def write_report(report: Report, folder: str | Path) -> Path:
    """Write `folder/index.html` for `report`; returns its path."""
    colors = palette(len(report.class_names))
    return write_page(folder, f"diffseg evaluation: {report.dataset}", [
        f"<p>{report.images} image(s), {report.failed} could not be scored; {report.protocol} matching; "
        f"{report.seconds:.1f} s.</p>",
        _scores(report), _legend(report.class_names, colors), "<h2>Samples</h2>",
        "<div class='samples'>", *(_sample(sample, colors) for sample in report.samples), "</div>",
        _failures(report), _class_table(report), "<h2>Source</h2>",
        f"<pre>{text(json.dumps(report.source, indent=2, default=str))}</pre>",
    ])


def _scores(report: Report) -> str:
    rows = "".join(f"<tr><td>{text(name)}</td><td>{percent(r['accuracy'])}</td><td>{percent(r['miou'])}</td>"
                   f"<td>{r['images']}</td><td>{r['seconds']:.1f}</td></tr>" for name, r in report.results.items())
    return ("<h2>Scores</h2><table><tr><th>method</th><th>ACC %</th><th>mIoU %</th><th>images</th>"
            f"<th>seconds</th></tr>{rows}</table>")


def _class_table(report: Report) -> str:
    names = list(report.results)
    header = "".join(f"<th>{text(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><td>{text(label)}</td>"
        + "".join(f"<td>{percent(report.results[name]['iou'][c])}</td>" for name in names) + "</tr>"
        for c, label in enumerate(report.class_names))
    return f"<h2>IoU per class (%)</h2><table><tr><th>class</th>{header}</tr>{rows}</table>"


def _legend(class_names: tuple[str, ...], colors: np.ndarray) -> str:
    items = "".join(f"<span><i class='swatch' style='background:rgb{tuple(int(v) for v in colors[c])}'></i>"
                    f"{text(name)}</span>" for c, name in enumerate(class_names))
    unmatched = f"<span><i class='swatch' style='background:rgb{UNMATCHED}'></i>no class matched</span>"
    return f"<p class='legend'>{items}{unmatched}</p>"


def _sample(sample: Sample, colors: np.ndarray) -> str:
    """Photo, ground truth, and each prediction with its segments in the color of their matched class (grey:
    matched to no class of the image), so right and wrong regions can be told apart at a glance."""
    figures = [figure(sample.photo, "photo"), figure(paint(sample.photo, sample.label, colors), "ground truth")]
    for name, prediction in sample.predictions.items():
        score = sample.scores[name]
        caption = (f"{name}: {score.segments} segment(s), ACC {percent(score.accuracy)}, "
                   f"mIoU {percent(score.miou)}")
        figures.append(figure(paint(sample.photo, prediction, colors, paint_negative=True), caption))
    return f"<div><b>{text(sample.image_id)}</b><div class='row'>{''.join(figures)}</div></div>"


def _failures(report: Report) -> str:
    seen: dict[str, str] = {}
    for row in report.rows:
        if row["status"] != "ok":
            seen.setdefault(row["image_id"], row["error"])
    return failure_list("Not scored", list(seen.items()), FAILED_LISTED)
