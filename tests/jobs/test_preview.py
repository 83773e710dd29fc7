"""`jobs/preview.py` on a real labeling job's output, looked at in a real headless browser."""

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import chromium, colorful_fraction
from tests.jobs.stores import NO_CREDENTIALS, without_credentials
from tests.pipeline.labeling.data import BOMB_LIMIT, bad_image_bytes, good_images, tar_bytes, write_files

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_a_file_for_out_or_for_the_output_is_one_line_and_exit_two(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "file").write_text("")
    for output, out, line in [
            (tmp_path / "out", tmp_path / "file", f"error: --out {tmp_path / 'file'} is a file; give a folder (new or "
                                                  "empty)"),
            (tmp_path / "file", tmp_path / "view", f"error: {tmp_path / 'file'} is a file; give the folder of a "
                                                   "labeling job's output")]:
        result = run("preview.py", str(output), "--out", str(out))
        assert result.returncode == 2 and result.stderr.splitlines() == [line]


def test_s3_without_credentials_is_one_line_and_exit_two(tmp_path, s3_endpoint):
    result = run("preview.py", "s3://nope/masks", "--out", str(tmp_path / "view"), "--storage-options",
                 json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}}), env=without_credentials(tmp_path))
    assert result.returncode == 2 and result.stderr.splitlines() == [f"error: s3://nope/masks: {NO_CREDENTIALS}"]


@pytest.mark.integration
def test_the_preview_of_a_job_output_renders_in_a_browser(tmp_path, ray_cluster):
    write_files(tmp_path / "in", {**good_images(6), **bad_image_bytes()})
    labeled = run("label.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", "tiny",
                  "--resolution", "128", "--max-pixels", str(BOMB_LIMIT), "--num-actors", "1", "--cpus-per-actor", "1",
                  "--no-progress")
    assert labeled.returncode == 0, labeled.stderr
    result = run("preview.py", str(tmp_path / "out"), "--out", str(tmp_path / "view"), "--sample", "4")
    assert result.returncode == 0, result.stderr
    page = Path(result.stdout.strip())
    html = page.read_text()
    assert "12 image(s): 6 labeled, 6 failed (50.0% errors)" in html
    for name in bad_image_bytes():
        assert f"<li>{name}: " in html
    assert "photo not readable" not in html and "run_id: " in html and "model: tiny" in html
    pictures = re.findall(r"src='data:image/jpeg;base64,([^']+)'", html)
    assert len(pictures) == 4 and all(Image.open(io.BytesIO(base64.b64decode(p))).size[0] > 0 for p in pictures)

    dom = chromium(tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and dom.stdout.count("<img") == 4 and "Segments per image" in dom.stdout
    assert ":CONSOLE" not in dom.stderr, dom.stderr  # no script errors, no resources that failed to load
    shot = tmp_path / "shot.png"
    shown = chromium(tmp_path / "profile", "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri())
    assert shown.returncode == 0
    assert colorful_fraction(shot) > 0.01  # the colored overlays are drawn


@pytest.mark.integration
def test_tar_members_are_shown_with_their_photo(tmp_path, ray_cluster):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.tar").write_bytes(tar_bytes(good_images(3)))
    labeled = run("label.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", "tiny",
                  "--resolution", "128", "--crop", "center", "--num-actors", "1", "--cpus-per-actor", "1",
                  "--no-progress")
    assert labeled.returncode == 0, labeled.stderr
    result = run("preview.py", str(tmp_path / "out"), "--out", str(tmp_path / "view"))
    assert result.returncode == 0, result.stderr
    html = Path(result.stdout.strip()).read_text()
    assert html.count("<figure>") == 3 and "photo not readable" not in html and "shard.tar/img-000.png" in html


def test_bad_arguments_are_one_line_and_exit_two(tmp_path):
    result = run("preview.py", str(tmp_path), "--out", str(tmp_path / "view"))
    assert result.returncode == 2 and "not a labeling job's output" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run("preview.py", str(tmp_path), "--out", str(tmp_path / "view"), "--sample", "-1")
    assert result.returncode == 2 and result.stderr.strip() == "error: --sample must be at least 0, got -1"
