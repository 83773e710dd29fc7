"""Where a mask came from: software versions and source revision (never credentials)."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import diffseg

PACKAGES = ("torch", "diffusers", "transformers", "ray", "pyarrow", "fsspec")


@functools.cache
def environment() -> dict[str, Any]:
    """Versions of diffseg, Python and the packages that shape the masks or the files, and the git commit
    of the diffseg checkout (None when not run from a git checkout)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"diffseg": diffseg.__version__, "git_commit": git_commit(), "python": platform.python_version(),
            "versions": versions}


def git_commit() -> str | None:
    """The commit of the checkout diffseg runs from, with `+dirty` when it has uncommitted changes."""
    folder = Path(diffseg.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def now() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
