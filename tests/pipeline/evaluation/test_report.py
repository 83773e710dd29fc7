"""The evaluation report: one self-contained HTML page that a browser renders."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from diffseg import DiffSeg, DiffSegConfig
from pipeline.evaluation.datasets import open_dataset
from pipeline.evaluation.report import write_report
from pipeline.evaluation.scoring import score_model, variants
from synthetic.datasets import coco_stuff
from tests.browser import chromium, colorful_fraction

CONFIG = DiffSegConfig(resolution=128, crop="center", kl_threshold=0.5)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    coco_stuff(root, sizes=((96, 64), (64, 80), (72, 72), (80, 64), (64, 64)))
    (root / "images" / "val2017" / "000000002139.jpg").write_bytes(b"broken")  # picked; the next one is shown
    segmenter = DiffSeg.from_pretrained("tiny", config=CONFIG, device="cpu")
    return score_model(segmenter, open_dataset("coco-stuff-27", str(root)), variants("diffseg", CONFIG, (0.5, 1.0)),
                       samples=3, progress=False)


def test_the_page_holds_scores_classes_samples_and_failures(report, tmp_path):
    page = write_report(report, tmp_path / "report").read_text()
    result = report.results["diffseg tau=0.5"]
    assert f"<td>diffseg tau=0.5</td><td>{100 * result['accuracy']:.1f}</td><td>{100 * result['miou']:.1f}</td>" \
           f"<td>4</td>" in page
    assert "furniture-stuff" in page and "no class matched" in page
    assert page.count("<figure>") == 3 * 4  # photo, ground truth, two thresholds
    assert [s.image_id for s in report.samples] == ["000000000139.jpg", "000000003139.jpg", "000000004139.jpg"]
    assert "000000002139.jpg: cannot decode image" in page
    assert '"model": "tiny"' in page


def test_the_page_is_self_contained(report, tmp_path):
    page = write_report(report, tmp_path / "report").read_text()
    assert list((tmp_path / "report").iterdir()) == [tmp_path / "report" / "index.html"]
    assert not re.search(r"(href|src)=['\"](?!data:)", page)
    pictures = re.findall(r"<img src='data:image/jpeg;base64,([^']+)' width='(\d+)' height='(\d+)'", page)
    assert len(pictures) == 12
    for data, width, height in pictures:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.size == (int(width), int(height)) == (128, 128)


def test_predicted_segments_take_the_color_of_their_matched_class(report):
    sample = report.samples[0]
    prediction, label = sample.predictions["diffseg tau=0.5"], sample.label
    shown = set(np.unique(prediction)) - {-1}
    assert shown <= set(np.unique(label)) - {-1}  # only classes of this image, the rest is "unmatched"


@pytest.mark.integration
def test_a_headless_browser_renders_the_page(report, tmp_path):
    page = write_report(report, tmp_path / "report")
    shot = tmp_path / "shot.png"
    dom = chromium(tmp_path / "profile", "--window-size=1200,1600", "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and dom.stdout.count("<img") == 12 and "diffseg tau=1" in dom.stdout
    shown = chromium(tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri())
    assert shown.returncode == 0
    assert colorful_fraction(shot) > 0.05  # overlays and photos, not text
