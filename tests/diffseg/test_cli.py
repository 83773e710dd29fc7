"""`python -m diffseg segment` as a user runs it: a real subprocess on real files."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic.photos import photo

ROOT = Path(__file__).resolve().parents[2]
CPU = ["--device", "cpu"]
"""The default device is CUDA when there is one: these tests are about the CPU path on any host."""


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "diffseg", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.integration
def test_a_folder_with_good_and_corrupt_files(tmp_path):
    inputs = tmp_path / "photos"
    (inputs / "nested").mkdir(parents=True)
    photo(333, 517, seed=1).save(inputs / "tall.jpg")
    photo(96, 64, seed=2).save(inputs / "nested" / "small.png")
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.txt").write_text("not an image, not an input")
    out = tmp_path / "masks"

    result = run("segment", str(inputs), "--out", str(out), "--model", "tiny", "--batch-size", "2", *CPU)

    assert result.returncode == 1, result.stderr
    assert "skipped" in result.stderr and "corrupt.jpg" in result.stderr and "empty.png" in result.stderr
    assert "segmented 2 image(s), skipped 2" in result.stderr
    assert "Traceback" not in result.stderr
    mask = Image.open(out / "tall.jpg.mask.png")
    assert mask.size == (333, 517) and mask.mode == "L"
    assert Image.open(out / "nested" / "small.png.mask.png").size == (96, 64)
    overlay = Image.open(out / "tall.jpg.overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (320, 512)
    assert np.asarray(mask).max() > 0
    assert sorted(p.name for p in out.rglob("*.png")) == sorted(
        ["tall.jpg.mask.png", "tall.jpg.overlay.png", "small.png.mask.png", "small.png.overlay.png"])


@pytest.mark.integration
def test_all_good_files_exit_zero_with_settings(tmp_path):
    image = tmp_path / "a.png"
    photo(128, 128).save(image)
    result = run("segment", str(image), "--out", str(tmp_path / "out"), "--model", "tiny",
                 "--kl-threshold", "0.9,1.0,1.1", "--crop", "center", "--resolution", "128", "--refine", *CPU)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out" / "a.png.mask.png").size == (128, 128)


def test_diffcut_on_an_sdxl_layout_model_from_the_command_line(tmp_path):
    photo(200, 150).save(tmp_path / "a.png")
    result = run("segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--model", "tiny-xl",
                 "--method", "diffcut", "--resolution", "256", "--ncut-threshold", "1.0", "--pamr", *CPU)
    assert result.returncode == 0, result.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "a.png.mask.png"))
    assert mask.shape == (150, 200) and mask.max() >= 1


@pytest.mark.parametrize("args, message", [
    (["--kl-threshold", "high"], "not a number"),
    (["--resolution", "500"], "multiple of 64"),
    (["--method", "diffcut", "--ncut-threshold", "3"], "ncut_threshold must be in (0, 2]"),
    (["--method", "kmeans-c", "--pamr"], "pamr applies to the diffseg, diffcut and kway methods only"),
    (["--model", "acme/not-cached"], "cannot load model 'acme/not-cached'"),
])
def test_bad_settings_are_one_line_and_exit_two(tmp_path, args, message):
    image = tmp_path / "a.png"
    photo(64, 64).save(image)
    result = run("segment", str(image), "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_an_out_that_is_a_file_is_one_line_before_any_image_is_segmented(tmp_path):
    photo(64, 64).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("")
    started = time.monotonic()
    result = run("segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "file"), "--model", "tiny", *CPU)
    assert result.returncode == 2 and time.monotonic() - started < 20
    assert result.stderr.splitlines() == [f"error: --out {tmp_path / 'file'} is a file; give a folder (new or empty)"]


def test_help_answers_at_once_without_importing_torch():
    for args in (["--help"], ["segment", "--help"]):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "diffseg", *args], capture_output=True,
                                text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert result.returncode == 0 and "segment" in result.stdout
        imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time")}
        assert "diffseg.cli" in imported and not imported & {"torch", "diffusers", "transformers"}
        assert time.monotonic() - started < 3


def test_a_missing_input_is_reported(tmp_path):
    result = run("segment", str(tmp_path / "nothing.jpg"), "--out", str(tmp_path / "out"), "--model", "tiny")
    assert result.returncode == 2 and "no such file or folder" in result.stderr


@pytest.mark.integration
def test_output_names_stay_readable_inside_the_folder_and_never_overwrite_each_other(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "masks"
    for name in ["sub/cat.jpg", "a.jpg", "a.png", "odd %#\\name\n.png"]:
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        photo(64, 64).save(inputs / name)
    # the folder, then one of its files again: both would be a.jpg
    result = run("segment", str(inputs), str(inputs / "a.jpg"), "--out", str(out), "--model", "tiny",
                 "--resolution", "128", *CPU)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mask.png")) == [
        "a.jpg.mask.png", "a.jpg~2.mask.png", "a.png.mask.png", "odd %25%23%5Cname%0A.png.mask.png",
        "sub/cat.jpg.mask.png"]
    assert len(list(out.rglob("*.overlay.png"))) == 5
    assert result.stderr.strip().splitlines()[-1].endswith(
        "; 1 image(s) named NAME~N so as not to overwrite another's")
