"""Which torch build `make install` installs: decided by `make -n` (nothing run, nothing installed) with a PATH
that has an `nvidia-smi` that answers, or none."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_commands(tmp_path: Path, gpu: bool, *overrides: str) -> str:
    """What `make install` would run for a new virtual environment, on a machine with or without an NVIDIA GPU."""
    path = tmp_path / "bin"
    path.mkdir(exist_ok=True)
    if gpu:
        (path / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (path / "nvidia-smi").chmod(0o755)
    result = subprocess.run([shutil.which("make"), "-n", "install", f"VENV={tmp_path / 'venv'}", *overrides],
                            cwd=ROOT, env={"PATH": str(path)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def torch_line(commands: str) -> str:
    return next(line for line in commands.splitlines() if '"torch==' in line)


def test_without_a_gpu_the_cpu_build_comes_from_the_pytorch_cpu_index(tmp_path):
    """A CPU wheel pip already has at hand (its find-links) is taken first, asking no index: this project's CI
    machine reaches only its own registry, not download.pytorch.org."""
    line = torch_line(install_commands(tmp_path, gpu=False))
    at_hand, _, from_index = line.partition(" || ")
    assert at_hand.endswith('pip install --quiet --no-deps --no-index "torch==2.13.0+cpu" 2>/dev/null')
    assert from_index.endswith(f'pip install --quiet "torch==2.13.0+cpu" --index-url "{CPU_INDEX}"')


def test_with_a_gpu_the_regular_cuda_build_comes_from_the_package_registry(tmp_path):
    line = torch_line(install_commands(tmp_path, gpu=True))
    assert line.endswith('-m pip install --quiet "torch==2.13.0"')


def test_torch_cpu_or_cuda_overrides_the_detection(tmp_path):
    assert '"torch==2.13.0+cpu"' in torch_line(install_commands(tmp_path, True, "TORCH=cpu"))
    assert torch_line(install_commands(tmp_path, False, "TORCH=cuda")).endswith('"torch==2.13.0"')


def test_a_mirror_of_the_cpu_index_replaces_it(tmp_path):
    line = torch_line(install_commands(tmp_path, False, "TORCH_CPU_INDEX=https://mirror.example/whl/cpu"))
    assert '--index-url "https://mirror.example/whl/cpu"' in line and CPU_INDEX not in line


def test_an_unknown_torch_build_is_refused(tmp_path):
    result = subprocess.run([shutil.which("make"), "-n", "install", f"VENV={tmp_path / 'venv'}", "TORCH=rocm"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'TORCH must be cpu or cuda, got "rocm"' in result.stderr


def test_the_editable_install_ignores_only_setuptools_notice_about_editable_installs(tmp_path):
    """setuptools warns on every editable install that same-named folders may shadow the package, and pip shows it
    even with --quiet; the filter matches that warning's text only."""
    line = next(line for line in install_commands(tmp_path, gpu=False).splitlines() if " -e " in line)
    assert line.startswith('PYTHONWARNINGS="ignore:Editable installation" ')
