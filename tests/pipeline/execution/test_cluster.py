"""Connecting a job to Ray: which cluster it runs on, said first on stderr, and a private local Ray that starts
without Ray's token-authentication notice."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.execution.cluster import describe_cluster

ROOT = Path(__file__).resolve().parents[3]
CONNECT = "from pipeline.execution.cluster import connect, disconnect; connect(); disconnect()"
AUTH = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def connect_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CONNECT], capture_output=True, text=True, timeout=180, env=env,
                          cwd=ROOT)


@pytest.mark.integration
def test_a_private_local_ray_starts_with_token_auth_and_says_only_which_cluster_it_is(tmp_path):
    """As `python jobs/label.py` outside the tests: no RAY_AUTH_* set. Ray would turn token auth on, warn so on
    every start and write ~/.ray/auth_token; the job's private Ray takes a token of its own, quietly."""
    env = {key: value for key, value in os.environ.items() if key not in (*AUTH, "RAY_ADDRESS")}
    result = connect_in_subprocess({**env, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"Ray: a private local Ray \(ends with this job\); 1 node\(s\), ([\d.]+) of \1 CPU\(s\) and "
                        r"([\d.]+) of \2 GPU\(s\) free\n", result.stderr), result.stderr
    assert not (tmp_path / ".ray").exists()


@pytest.mark.integration
def test_joining_a_cluster_names_its_address_nodes_and_free_cpus_and_gpus(ray_cluster):
    result = connect_in_subprocess({**os.environ, "RAY_ADDRESS": ray_cluster})
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"Ray: the Ray cluster at {re.escape(ray_cluster)}; 1 node\(s\), [\d.]+ of 8 CPU\(s\) and "
                        r"0 of 0 GPU\(s\) free\n", result.stderr), result.stderr


@pytest.mark.integration
def test_address_auto_names_the_cluster_it_found(ray_cluster):
    """By its head's GCS address as Ray reports it: the node's IP, where the test cluster was given 127.0.0.1."""
    port = ray_cluster.rpartition(":")[2]
    assert re.match(rf"Ray: the Ray cluster at [^ ]+:{port} \(found by address auto\); 1 node\(s\), ",
                    describe_cluster("auto")), describe_cluster("auto")
