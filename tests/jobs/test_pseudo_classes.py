"""The pseudo-class chain as a user runs it: label with descriptors, cluster, evaluate, export."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from pipeline.store.dataset import decode_mask
from synthetic.datasets import coco_stuff
from tests.pipeline.labeling.data import read_output

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args], capture_output=True, text=True,
                          timeout=300)


def summary_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_label_cluster_evaluate_and_export_with_the_tiny_model(tmp_path, ray_cluster):
    coco_stuff(tmp_path / "coco", sizes=((96, 64), (64, 80), (72, 72), (80, 64)))
    masks, classes = tmp_path / "masks", tmp_path / "classes"
    labeled = run("label.py", "--input", str(tmp_path / "coco" / "images" / "val2017"), "--output", str(masks),
                  "--model", "tiny", "--resolution", "128", "--descriptors", "--shard-size", "2", "--num-actors", "1",
                  "--cpus-per-actor", "1", "--gpus-per-actor", "0", "--no-progress")
    assert labeled.returncode == 0, labeled.stderr

    clustered = run("cluster.py", "--input", str(masks), "--output", str(classes), "--classes", "3",
                    "--num-actors", "1", "--no-progress")
    assert clustered.returncode == 0, clustered.stderr
    # Every pixel of every semantic mask is the class of the segment it was in.
    by_id = {row["image_id"]: row for row in read_output(str(masks))}
    for row in ds.dataset(str(classes), format="parquet").to_table().to_pylist():
        segments, semantic = decode_mask(by_id[row["image_id"]]["mask"]), decode_mask(row["mask"])
        assert np.array_equal(semantic, np.asarray(row["classes"])[segments])
        assert set(np.unique(semantic)) <= {0, 1, 2}

    scored = run("evaluate.py", "--dataset", "coco-stuff-27", "--root", str(tmp_path / "coco"), "--predictions",
                 str(classes), "--protocol", "dataset", "--scores", str(tmp_path / "scores.csv"), "--no-progress")
    assert scored.returncode == 0, scored.stderr
    summary = summary_of(scored)
    assert summary["protocol"] == "dataset"
    assert summary["results"]["diffseg 3 classes (predictions)"]["images"] == 4

    exported = run("export.py", str(classes), "--out", str(tmp_path / "png"), "--format", "png", "--no-progress")
    assert exported.returncode == 0, exported.stderr
    assert len(list((tmp_path / "png").rglob("*.mask.png"))) == 4
    # COCO and SA-1B annotate each segment of a labeling output: refused rather than written empty.
    refused = run("export.py", str(classes), "--out", str(tmp_path / "annotations"), "--format", "coco",
                  "--no-progress")
    assert refused.returncode == 2 and "holds pseudo-class masks" in refused.stderr
    assert not (tmp_path / "annotations").exists()
