"""`jobs/evaluate.py` as users run it: a subprocess on a dataset folder, and on a labeling job's output."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO

from synthetic.datasets import coco_stuff
from tests.jobs.stores import NO_CREDENTIALS, without_credentials

ROOT = Path(__file__).resolve().parents[2]
EVALUATE, LABEL = str(ROOT / "jobs" / "evaluate.py"), str(ROOT / "jobs" / "label.py")
TINY = ["--model", "tiny", "--resolution", "128", "--no-progress"]
CPU = ["--device", "cpu"]
"""evaluate.py defaults to CUDA (float16) when there is a GPU: these tests are about the CPU path on any host."""


def run(script: str, *args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args, message", [
    (["--dataset", "ade20k"], "error: argument --dataset: invalid choice: 'ade20k'"),
    (["--limit", "0"], "error: --limit must be at least 1, got 0"),
    (["--method", "kmeans-c", "--sweep", "0.9,1.1"],
     "error: a threshold sweep applies to the diffseg, diffcut and kway"),
    (["--predictions", "masks/", "--method", "kmeans-s"], "error: --predictions scores masks that exist"),
    (["--root", "/nowhere"], "error: no images under file:///nowhere/images/val2017"),
    (["--protocol", "global"], "error: argument --protocol: invalid choice: 'global'"),
])
def test_bad_arguments_are_one_line_and_exit_two(tmp_path, args, message):
    coco_stuff(tmp_path / "coco")
    defaults = {"--dataset": "coco-stuff-27", "--root": str(tmp_path / "coco")}
    given = dict(zip(args[::2], args[1::2]))
    result = run(EVALUATE, *[part for flag, value in {**defaults, **given}.items() for part in (flag, value)],
                 *TINY, *CPU, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_help_answers_at_once_without_importing_torch():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-X", "importtime", EVALUATE, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--predictions" in result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "numpy" in imported and not imported & {"torch", "diffusers", "transformers", "pipeline.evaluation.scoring"}
    assert time.monotonic() - started < 3


def test_a_scores_file_that_exists_is_never_overwritten(tmp_path):
    coco_stuff(tmp_path / "coco")
    (tmp_path / "scores.csv").write_text("an earlier run's scores")
    result = run(EVALUATE, "--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--scores",
                 str(tmp_path / "scores.csv"), *TINY, *CPU)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: --scores {tmp_path / 'scores.csv'} exists; choose another file "
                                          "with --scores, or remove it"]
    assert (tmp_path / "scores.csv").read_text() == "an earlier run's scores"


def test_a_report_folder_that_is_a_file_is_refused_before_scoring(tmp_path):
    coco_stuff(tmp_path / "coco")
    (tmp_path / "file").write_text("")
    result = run(EVALUATE, "--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--report",
                 str(tmp_path / "file"), *TINY, *CPU, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: --report {tmp_path / 'file'} is a file; give a folder (new or "
                                          "empty)"]
    assert not (tmp_path / "out").exists()


def test_a_dataset_on_s3_without_credentials_is_one_line_and_exit_two(tmp_path, s3_endpoint):
    result = run(EVALUATE, "--dataset", "coco-stuff-27", "--root", "s3://nope/coco", "--storage-options",
                 json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}}), *TINY, *CPU, cwd=tmp_path,
                 env=without_credentials(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: --root s3://nope/coco: {NO_CREDENTIALS}"]


@pytest.mark.integration
def test_scoring_a_model_prints_the_table_and_writes_scores_and_report(tmp_path):
    ids = coco_stuff(tmp_path / "coco", sizes=((96, 64), (64, 80), (72, 72), (80, 64)))
    (tmp_path / "list.txt").write_text("\n".join(ids[:3]))
    result = run(EVALUATE, "--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--image-list",
                 str(tmp_path / "list.txt"), "--sweep", "0.5,1.1", "--scores", str(tmp_path / "scores.parquet"),
                 "--report", str(tmp_path / "report"), *TINY, *CPU)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "coco-stuff-27: 3 image(s), 0 not scored, per-image matching"
    assert lines[1].split() == ["method", "ACC", "%", "mIoU", "%", "images", "seconds"]
    assert [line.split()[:2] for line in lines[2:4]] == [["diffseg", "tau=0.5"], ["diffseg", "tau=1.1"]]
    summary = summary_of(result)
    for line, (name, scores) in zip(lines[2:4], summary["results"].items()):
        assert line.split()[2:5] == [f"{100 * scores['accuracy']:.1f}", f"{100 * scores['miou']:.1f}", "3"]
    table = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert len(table) == 6 and {row["variant"] for row in table} == {"diffseg tau=0.5", "diffseg tau=1.1"}
    assert {row["image_id"] for row in table} == {f"{i}.jpg" for i in ids[:3]}
    page = tmp_path / "report" / "index.html"
    assert page.exists() and summary["report"] == str(page)


@pytest.mark.integration
def test_images_that_cannot_be_scored_give_exit_one_and_rows_that_say_why(tmp_path):
    ids = coco_stuff(tmp_path / "coco")
    (tmp_path / "coco" / "images" / "val2017" / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")
    result = run(EVALUATE, "--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--method", "kmeans-c",
                 "--num-clusters", "3", *TINY, *CPU, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert summary_of(result)["failed"] == 1 and summary_of(result)["results"]["kmeans-c K=3"]["images"] == 2
    scores = (tmp_path / "out" / "evaluate" / "coco-stuff-27-kmeans-c.csv").read_text().splitlines()
    assert len(scores) == 4 and f'"{ids[1]}.jpg","kmeans-c K=3","error","cannot decode image' in scores[2]


@pytest.mark.integration
def test_a_labeling_jobs_output_scores_as_the_model_does(tmp_path, ray_cluster):
    coco_stuff(tmp_path / "coco")
    labeled = run(LABEL, "--input", str(tmp_path / "coco" / "images" / "val2017"), "--output", str(tmp_path / "masks"),
                  "--num-actors", "1", "--cpus-per-actor", "1", "--gpus-per-actor", "0", *TINY)
    assert labeled.returncode == 0, labeled.stderr
    dataset = ["--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--no-progress"]
    scored = run(EVALUATE, *dataset, "--predictions", str(tmp_path / "masks"), "--scores", str(tmp_path / "p.csv"))
    assert scored.returncode == 0, scored.stderr
    # The one-CPU actor runs torch on 1 thread: so does the command here, so both run the same kernels on the
    # same inputs and shapes (batch size 1) on this machine and their masks, hence their scores, are the same.
    direct = run(EVALUATE, *dataset, *TINY, *CPU, "--crop", "none", "--scores", str(tmp_path / "d.csv"),
                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert direct.returncode == 0, direct.stderr
    from_job = summary_of(scored)["results"]["diffseg (predictions)"]
    from_model = summary_of(direct)["results"]["diffseg tau=1.1"]
    assert from_job["images"] == from_model["images"] == 3
    assert (from_job["accuracy"], from_job["miou"]) == (from_model["accuracy"], from_model["miou"])


@pytest.mark.integration
@pytest.mark.parametrize("method", ["diffcut", "kway"])
def test_a_feature_method_on_an_sdxl_model_labels_scores_and_exports_end_to_end(tmp_path, ray_cluster, method):
    coco_stuff(tmp_path / "coco", sizes=((96, 64), (64, 80), (72, 72)))
    diffcut = ["--method", method, "--model", "tiny-xl", "--resolution", "256", "--ncut-threshold", "1.0",
               "--crop", "center", "--no-progress"]
    labeled = run(LABEL, "--input", str(tmp_path / "coco" / "images" / "val2017"), "--output", str(tmp_path / "masks"),
                  "--num-actors", "1", "--cpus-per-actor", "1", "--gpus-per-actor", "0", *diffcut)
    assert labeled.returncode == 0, labeled.stderr
    dataset = ["--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--no-progress"]
    scored = run(EVALUATE, *dataset, "--predictions", str(tmp_path / "masks"), "--scores", str(tmp_path / "p.csv"))
    assert scored.returncode == 0, scored.stderr
    # As in the DiffSeg test above: one torch thread on both sides, the same kernels, the same masks.
    direct = run(EVALUATE, *dataset, *diffcut, *CPU, "--scores", str(tmp_path / "d.parquet"),
                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert direct.returncode == 0, direct.stderr
    from_job = summary_of(scored)["results"][f"{method} (predictions)"]
    from_model = summary_of(direct)["results"][f"{method} tau=1"]
    assert from_job["images"] == from_model["images"] == 3
    assert (from_job["accuracy"], from_job["miou"]) == (from_model["accuracy"], from_model["miou"])
    assert all(0 < row["pixels"] <= 256 * 256 for row in pq.read_table(tmp_path / "d.parquet").to_pylist())

    # DiffCut's paper scores at 128 x 128: masks made at that size, ground truth resized to it.
    small = run(EVALUATE, *dataset, *diffcut, *CPU, "--label-size", "128", "--pamr", "--sweep", "0.5,1.0",
                "--scores", str(tmp_path / "s.parquet"))
    assert small.returncode == 0, small.stderr
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert {row["variant"] for row in rows} == {f"{method} tau=0.5 pamr", f"{method} tau=1 pamr"}
    assert len(rows) == 6 and all(0 < row["pixels"] <= 128 * 128 for row in rows)

    exported = subprocess.run([sys.executable, str(ROOT / "jobs" / "export.py"), str(tmp_path / "masks"), "--out",
                               str(tmp_path / "coco-out"), "--format", "coco", "--no-progress"],
                              capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    annotations = COCO(str(tmp_path / "coco-out" / "annotations.json"))
    assert len(annotations.getImgIds()) == 3 and len(annotations.getAnnIds()) >= 3
