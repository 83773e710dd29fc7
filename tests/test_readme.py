"""The README and docs/ as a user runs them: every fenced code block of README.md and docs/*.md is run, or says
why it cannot run here, and so is every example in the jobs' --help.

A block is run unless the last line before its fence is a marker:

- `<!-- not run: REASON -->`: the block needs what this machine lacks (model weights from the Hub, S3
  credentials, a cluster, a GPU, a dataset); the reason must be given;
- `<!-- output -->`: an example of what a command prints, fenced as `text`.

`bash` blocks run with `bash -e -o pipefail`, `python` blocks with `python -c`, both in one working directory
per test session (links to the repository's jobs/, samples/ and synthetic/, the venv's bin/ first on PATH) that
holds the demo output `make demo MODEL=tiny` writes: out/demo/tiny (masks) and out/demo/tiny-png (PNG export),
made once by the same commands. A block that fails fails its file's test with the block and what it printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = ("jobs", "samples", "synthetic")
"""What the blocks read from the repository, linked into the working directory."""
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"^<!--\s*(output|not run:(.*?))\s*-->$")
HELP = {  # command line: the words that print its --help
    "jobs/label.py": ["jobs/label.py"],
    "jobs/export.py": ["jobs/export.py"],
    "jobs/preview.py": ["jobs/preview.py"],
    "jobs/cluster.py": ["jobs/cluster.py"],
    "jobs/evaluate.py": ["jobs/evaluate.py"],
    "python -m diffseg": ["-m", "diffseg"],
    "python -m diffseg segment": ["-m", "diffseg", "segment"],
}
LACKING = (  # what a --help example names that this machine lacks, and so the reason it is not run here
    (re.compile(r"\bray job submit\b"), "needs a Ray cluster to submit to"),
    (re.compile(r"\bs3://"), "needs an S3 bucket and credentials"),
    (re.compile(r"--root data/"), "needs a copy of the COCO-Stuff or Cityscapes dataset"),
    (re.compile(r"--model (?!tiny)"), "downloads model weights from the Hugging Face Hub"),
)
TIMEOUT = 600


@dataclass(frozen=True)
class Block:
    source: str
    line: int
    language: str
    text: str
    marker: str | None
    """None (run it), "output", or "not run: REASON"."""

    def where(self) -> str:
        return f"{self.source}:{self.line} ({self.language or 'no language'})"


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = MARKER.match(before)
        source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        found.append(Block(source, text.count("\n", 0, match.start()) + 1,
                           match.group(1).strip(), match.group(2), marker.group(1).strip() if marker else None))
    return found


def unmarked_problem(block: Block) -> str | None:
    """Why the block is neither run nor properly marked, or None when it is fine."""
    if block.marker is None:
        if block.language not in RUNNABLE:
            return (f"a `{block.language or 'unfenced'}` block is not run: fence it as bash or python, or mark it "
                    "`<!-- not run: REASON -->` or `<!-- output -->` (fenced as text)")
        return None
    if block.marker == "output":
        return None if block.language == "text" else "an `<!-- output -->` block must be fenced as text"
    if not block.marker.partition(":")[2].strip():
        return "`<!-- not run: -->` without a reason"
    return None


def environment(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # as a user runs it: the job starts its own local Ray
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"  # nothing here may download; a block that tries fails
    env["HF_DATASETS_CACHE"] = str(workdir / ".cache" / "datasets")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(argv: list[str], workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=workdir, env=environment(workdir), capture_output=True, text=True,
                          timeout=TIMEOUT)


def failure(what: str, code: str, done: subprocess.CompletedProcess) -> str:
    return (f"{what} exited {done.returncode}\n--- block ---\n{code}\n--- stdout ---\n{done.stdout[-4000:]}\n"
            f"--- stderr ---\n{done.stderr[-6000:]}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory with the demo output of `make demo MODEL=tiny`, made by the commands it runs."""
    workdir = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (workdir / name).symlink_to(ROOT / name, target_is_directory=True)
    python = sys.executable
    demo = [python, "jobs/label.py", "--input", "samples", "--output", "out/demo/tiny", "--model", "tiny"]
    done = run(demo, workdir)
    assert done.returncode == 0, failure("the demo's labeling job", " ".join(demo), done)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["images_ok"] == 4 and summary["images_failed"] == 0, summary
    export = [python, "jobs/export.py", "out/demo/tiny", "--out", "out/demo/tiny-png"]
    done = run(export, workdir)
    assert done.returncode == 0, failure("the demo's export", " ".join(export), done)
    return workdir


# --- every block is run or marked ---------------------------------------------------------------------------


def test_the_documents_are_found():
    names = {path.name for path in DOCS}
    assert {"README.md", "algorithm.md", "labeling.md", "outputs.md", "exports.md"} <= names
    assert any(block.marker is None for block in blocks(ROOT / "README.md"))


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_block_is_run_or_marked(path):
    problems = [f"{block.where()}: {problem}" for block in blocks(path)
                if (problem := unmarked_problem(block))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_leads_to_a_file(path):
    """Links between the README, docs/, infra/ and benchmarks/ resolve, and none points users outside the
    repository (at the team's notes in ../shared, say)."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", FENCE.sub("", path.read_text()))
    local = [t for t in targets if not re.match(r"^[a-z]+://", t)]
    broken = [t for t in local if not (path.parent / t).exists() or not (path.parent / t).resolve().is_relative_to(ROOT)
              or (path.parent / t).resolve().parts[len(ROOT.parts):][:1] == ("shared",)]
    assert not broken, f"{path.relative_to(ROOT)}: links that lead nowhere or outside the repository: {broken}"
    if path.name == "README.md":
        assert {f"docs/{doc.name}" for doc in DOCS if doc.parent.name == "docs"} <= set(local), \
            "the README links every page of docs/"


def test_the_marker_rules_catch_unmarked_blocks(tmp_path):
    """The rules the documents are checked with: an unknown language, an output block fenced as bash, and a
    reason left out are each refused; bash, python, and marked blocks pass."""
    doc = tmp_path / "rules.md"
    text = ("```\nunfenced\n```\n\n<!-- output -->\n```bash\nls\n```\n\n<!-- not run: -->\n```bash\nls\n```\n\n"
            "```yaml\na: 1\n```\n\n```bash\nls\n```\n\n<!-- not run: needs a GPU -->\n```yaml\na: 1\n```\n\n"
            "<!-- output -->\n```text\nok\n```\n")
    doc.write_text(text)
    found = blocks(doc)
    assert [unmarked_problem(block) is not None for block in found] == [True, True, True, True, False, False, False]


# --- every runnable block runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_runnable_block_runs(workdir, path):
    """The file's runnable blocks in their order, in the shared working directory; all of them run, and every
    one that fails is reported."""
    failures = []
    for block in blocks(path):
        if block.marker is not None:
            continue
        if RUNNABLE[block.language] == "bash":
            done = run(["bash", "-e", "-o", "pipefail", "-c", block.text], workdir)
        else:
            done = run([sys.executable, "-c", block.text], workdir)
        if done.returncode != 0:
            failures.append(failure(block.where(), block.text, done))
    assert not failures, "\n\n".join(failures)


# --- every example in the jobs' --help runs ------------------------------------------------------------------


def help_examples(text: str) -> list[str]:
    """The command lines a --help shows as examples: indented lines that start with `python` or `ray job submit`,
    backslash continuations joined, comments dropped."""
    examples = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        if re.match(r"^\s{2,}(python |ray job submit )", line):
            examples.append(re.sub(r"\s+#.*$", "", line).strip())
    return examples


def lacking(example: str) -> str | None:
    return next((reason for pattern, reason in LACKING if pattern.search(example)), None)


@pytest.fixture(scope="module")
def examples(workdir) -> list[tuple[str, str]]:
    """(command line whose --help shows it, example) for every example."""
    found = []
    for name, argv in HELP.items():
        done = run([sys.executable, *argv, "--help"], workdir)
        assert done.returncode == 0, failure(f"{name} --help", name, done)
        found += [(name, example) for example in help_examples(done.stdout)]
    return found


def test_the_help_examples_are_found(examples):
    shown = {name for name, _ in examples}
    for name in ("jobs/label.py", "jobs/export.py", "jobs/preview.py", "jobs/cluster.py", "jobs/evaluate.py"):
        assert name in shown, f"no example found in {name} --help"
    assert any(lacking(example) is None for _, example in examples)


def test_every_help_example_runs_or_needs_what_is_missing(workdir, examples):
    """Each example is run as shown, unless it names what this machine lacks (a cluster, S3, a dataset, weights
    from the Hub). The labeling example writes where the demo output is copied first, so that it runs as a
    re-run of a finished output (the job's resume path) and the module does not label the photos twice."""
    ran, failures = [], []
    for name, example in examples:
        if lacking(example):
            continue
        words = example.split()
        if words[:2] == ["python", "jobs/label.py"] and "--output" in words:
            output = workdir / words[words.index("--output") + 1]
            if not output.exists():
                shutil.copytree(workdir / "out" / "demo" / "tiny", output)
        done = run(["bash", "-e", "-o", "pipefail", "-c", example], workdir)
        ran.append(example)
        if done.returncode != 0:
            failures.append(failure(f"{name} --help example", example, done))
    assert not failures, "\n\n".join(failures)
    assert ran
