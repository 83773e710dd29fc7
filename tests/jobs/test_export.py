import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from diffseg import DiffSegConfig
from pipeline.sources import plan
from pipeline.storage import Location
from pipeline.worker import LabelWorker, Placement, WorkerSettings
from tests.pipeline.data import good_images, write_files

EXPORT = str(Path(__file__).resolve().parents[2] / "jobs" / "export.py")


def test_masks_are_exported_as_label_pngs_and_overlays(tmp_path):
    write_files(tmp_path / "in" / "sub", good_images(2))
    write_files(tmp_path / "in", {"broken.png": b"nope"})
    source, output = Location(str(tmp_path / "in")), Location(str(tmp_path / "out"))
    worker = LabelWorker(WorkerSettings(model="tiny", config=DiffSegConfig(resolution=128)), Placement(source, output))
    worker.process(plan(source)[0], run_id="r")
    result = subprocess.run([sys.executable, EXPORT, str(tmp_path / "out"), "--out", str(tmp_path / "png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png")) == [
        "sub/img-000.png.mask.png", "sub/img-000.png.overlay.png",
        "sub/img-001.jpg.mask.png", "sub/img-001.jpg.overlay.png"]
    photo = Image.open(tmp_path / "in" / "sub" / "img-000.png")
    overlay = Image.open(tmp_path / "png" / "sub" / "img-000.png.overlay.png")
    assert overlay.size == photo.size and overlay.mode == "RGB"
    assert not np.array_equal(np.asarray(overlay), np.asarray(photo.convert("RGB")))


def test_an_unreadable_output_is_one_line_and_exit_two(tmp_path):
    result = subprocess.run([sys.executable, EXPORT, str(tmp_path / "missing"), "--out", str(tmp_path / "png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1
