"""Headless Chromium (Debian's package) for tests that look at the pages the project writes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Headless, no sandbox (root), and none of the background connections this closed network would refuse.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run chromium with `args` and a fresh profile folder. Skips where it is not installed, except under CI
    (`.ci/run` installs it), where its absence is a failure."""
    browser = shutil.which("chromium")
    if browser is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed here (.ci/run installs it)")
    assert browser, "chromium is missing: .ci/run installs it"
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


def colorful_fraction(screenshot: Path) -> float:
    """Share of a screenshot's pixels that are strongly colored (photos and overlays, not text or background)."""
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    return float(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).mean())
