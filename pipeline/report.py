"""A self-contained HTML page of an evaluation `Report`: the scores, and sample images side by side.

One file, `index.html`, with its pictures embedded (no network, no other files): the score table, the IoU
of every class, and for each sample the photo, the ground truth and each variant's prediction as colored
overlays. Predicted segments take the color of the class they were matched to, so right and wrong regions
can be told apart at a glance; segments matched to no class are grey.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from diffseg.visualize import palette

from .evaluation import Report, Sample

UNMATCHED = (128, 128, 128)
"""Color of predicted segments matched to no class."""
OPACITY = 0.55
"""Weight of the class colors over the photo."""
FAILED_LISTED = 100
"""Failed images named on the page (all of them are in the per-image scores)."""

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.samples { display: flex; flex-direction: column; gap: 1.5em; }
.row { display: flex; gap: 8px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #555; }
.legend span { display: inline-block; margin: 2px 8px 2px 0; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin-right: 4px; }
"""


def write_report(report: Report, folder: str | Path) -> Path:
    """Write `folder/index.html` for `report`; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    colors = palette(len(report.class_names))
    page = "\n".join([
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
        f"<title>diffseg evaluation: {html.escape(report.dataset)}</title>", f"<style>{_STYLE}</style>",
        "</head><body>", f"<h1>diffseg evaluation: {html.escape(report.dataset)}</h1>",
        f"<p>{report.images} image(s), {report.failed} could not be scored; {report.protocol} matching; "
        f"{report.seconds:.1f} s.</p>",
        _scores(report), _legend(report.class_names, colors), "<h2>Samples</h2>",
        "<div class='samples'>", *(_sample(sample, colors) for sample in report.samples), "</div>",
        _failures(report), _class_table(report), "<h2>Source</h2>",
        f"<pre>{html.escape(json.dumps(report.source, indent=2, default=str), quote=False)}</pre>", "</body></html>",
    ])
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _scores(report: Report) -> str:
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_percent(r['accuracy'])}</td><td>{_percent(r['miou'])}</td>"
                   f"<td>{r['images']}</td><td>{r['seconds']:.1f}</td></tr>" for name, r in report.results.items())
    return ("<h2>Scores</h2><table><tr><th>method</th><th>ACC %</th><th>mIoU %</th><th>images</th>"
            f"<th>seconds</th></tr>{rows}</table>")


def _class_table(report: Report) -> str:
    names = list(report.results)
    header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_percent(report.results[name]['iou'][c])}</td>" for name in names) + "</tr>"
        for c, label in enumerate(report.class_names))
    return f"<h2>IoU per class (%)</h2><table><tr><th>class</th>{header}</tr>{rows}</table>"


def _legend(class_names: tuple[str, ...], colors: np.ndarray) -> str:
    items = "".join(f"<span><i class='swatch' style='background:rgb{tuple(int(v) for v in colors[c])}'></i>"
                    f"{html.escape(name)}</span>" for c, name in enumerate(class_names))
    unmatched = f"<span><i class='swatch' style='background:rgb{UNMATCHED}'></i>no class matched</span>"
    return f"<p class='legend'>{items}{unmatched}</p>"


def _sample(sample: Sample, colors: np.ndarray) -> str:
    figures = [_figure(sample.photo, "photo"),
               _figure(_overlay(sample.photo, sample.label, colors, show_unmatched=False), "ground truth")]
    for name, prediction in sample.predictions.items():
        score = sample.scores[name]
        caption = (f"{name}: {score.segments} segment(s), ACC {_percent(score.accuracy)}, "
                   f"mIoU {_percent(score.miou)}")
        figures.append(_figure(_overlay(sample.photo, prediction, colors, show_unmatched=True), caption))
    return f"<div><b>{html.escape(sample.image_id)}</b><div class='row'>{''.join(figures)}</div></div>"


def _failures(report: Report) -> str:
    failed = [row for row in report.rows if row["status"] != "ok"]
    seen: dict[str, str] = {}
    for row in failed:
        seen.setdefault(row["image_id"], row["error"])
    if not seen:
        return ""
    items = "".join(f"<li>{html.escape(image_id)}: {html.escape(str(reason))}</li>"
                    for image_id, reason in list(seen.items())[:FAILED_LISTED])
    more = f"<p>and {len(seen) - FAILED_LISTED} more.</p>" if len(seen) > FAILED_LISTED else ""
    return f"<h2>Not scored</h2><ul>{items}</ul>{more}"


def _overlay(photo: Image.Image, classes: np.ndarray, colors: np.ndarray, show_unmatched: bool) -> Image.Image:
    """The photo with each pixel of class c in color c; pixels of class -1 are grey (`show_unmatched`) or
    left as they are (ignored ground truth)."""
    table = np.vstack([colors, np.array([UNMATCHED], dtype=np.uint8)])
    colored = Image.fromarray(table[np.where(classes >= 0, classes, len(colors))])
    painted = (classes >= 0) | show_unmatched
    where = Image.fromarray(painted.astype(np.uint8) * 255)
    return Image.composite(Image.blend(photo, colored, OPACITY), photo, where)


def _figure(picture: Image.Image, caption: str) -> str:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=88)
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f"<figure><img src='data:image/jpeg;base64,{data}' width='{picture.width}' height='{picture.height}' "
            f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"
