"""Self-contained HTML pages: one file, pictures embedded as data URIs, no script, nothing fetched."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from diffseg.visualize import palette

DISPLAY_SIDE = 320
"""Longer side, in pixels, of the pictures on a page."""
OPACITY = 0.55
"""Weight of label colors over the photo."""
UNMATCHED = (128, 128, 128)
"""Color of pixels labeled -1 where they are painted (a segment matched to no class)."""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.samples { display: flex; flex-direction: column; gap: 1.5em; }
.row { display: flex; gap: 8px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 12px; color: #555; max-width: 320px; }
.legend span { display: inline-block; margin: 2px 8px 2px 0; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin-right: 4px; }
.bar { display: inline-block; height: 12px; background: #4a7fd4; vertical-align: middle; }
"""


def write_page(folder: str | Path, title: str, body: list[str]) -> Path:
    """Write `folder/index.html` with `title` and the `body` fragments; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    page = "\n".join(["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{text(title)}</title>",
                      f"<style>{STYLE}</style>", "</head><body>", f"<h1>{text(title)}</h1>", *body,
                      "</body></html>"])
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def text(value: object) -> str:
    """`value` as HTML text."""
    return html.escape(str(value), quote=False)


def figure(picture: Image.Image, caption: str) -> str:
    """The picture, embedded as a JPEG, with its caption."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=88)
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f"<figure><img src='data:image/jpeg;base64,{data}' width='{picture.width}' height='{picture.height}' "
            f"alt='{html.escape(caption)}'><figcaption>{text(caption)}</figcaption></figure>")


def display_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """`(width, height)` of a picture of an `(H, W)` map with its longer side at most `DISPLAY_SIDE`."""
    height, width = shape[:2]
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An integer map resized to `size` `(width, height)` by nearest neighbour."""
    resized = Image.fromarray(np.asarray(labels, dtype=np.int32)).resize(size, Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.int64)


def paint(photo: Image.Image, labels: np.ndarray, colors: np.ndarray, paint_negative: bool = False) -> Image.Image:
    """The photo (of the labels' size) with each pixel of label c in `colors[c]`; pixels labeled -1 are grey
    (`paint_negative`) or left as they are (ignored)."""
    table = np.vstack([colors, np.array([UNMATCHED], dtype=np.uint8)])
    colored = Image.fromarray(table[np.where(labels >= 0, labels, len(colors))])
    where = Image.fromarray(((labels >= 0) | paint_negative).astype(np.uint8) * 255)
    return Image.composite(Image.blend(photo.convert("RGB"), colored, OPACITY), photo.convert("RGB"), where)


def segment_colors(labels: np.ndarray) -> np.ndarray:
    """The palette for a map of segment ids 0..K-1."""
    return palette(int(labels.max(initial=0)) + 1)


def percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def spread(count: int, samples: int) -> list[int]:
    """Up to `samples` indices spread evenly over `range(count)`, first and last included, in order."""
    if count == 0 or samples <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, count - 1, min(samples, count)).round()})


def failure_list(title: str, failures: list[tuple[str, str]], limit: int) -> str:
    """A heading and the first `limit` `(image id, reason)` pairs as a list; "" when there are none."""
    if not failures:
        return ""
    items = "".join(f"<li>{text(image_id)}: {text(reason)}</li>" for image_id, reason in failures[:limit])
    more = f"<p>and {len(failures) - limit} more.</p>" if len(failures) > limit else ""
    return f"<h2>{text(title)}</h2><ul>{items}</ul>{more}"
