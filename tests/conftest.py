import os
import random
import secrets

# Tests never reach the Hub: every model comes from memory, a temp folder or a temp Hub cache.
os.environ["HF_HUB_OFFLINE"] = "1"
# Ray >= 2.59 turns token auth on for clusters it starts but not for `ray job submit`; every Ray process
# of the tests (clusters, drivers, job submission) inherits these, so all sides agree on a token of their
# own (`ray start` does not create one, and the user's ~/.ray is left alone).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import tempfile  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from diffusers import EulerDiscreteScheduler  # noqa: E402

from diffseg import DiffSeg, builtin  # noqa: E402
from diffseg.model import LoadedModel, load_model  # noqa: E402
from tests.cluster import start_moto, start_ray_head, stop  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--order", default="file",
                     help="file (as collected, the default), reverse, or shuffle[:SEED]: run the tests in another "
                          "order, to show that none depends on what another left behind")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = config.getoption("--order")
    if order == "reverse":
        items.reverse()
    elif order == "shuffle" or (order.startswith("shuffle:") and order[len("shuffle:"):].isdigit()):
        random.Random(int(order.partition(":")[2] or 0)).shuffle(items)
    elif order != "file":
        raise pytest.UsageError(f"--order must be file, reverse or shuffle[:SEED], got {order!r}")


@pytest.fixture(scope="session")
def tiny() -> DiffSeg:
    """The built-in tiny model, in memory, with default settings."""
    return DiffSeg.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny model written by `save_pretrained` in the standard diffusers layout."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    parts = builtin.build("tiny")
    parts.unet.save_pretrained(folder / "unet")
    parts.vae.save_pretrained(folder / "vae")
    parts.text_encoder.save_pretrained(folder / "text_encoder")
    parts.tokenizer.save_pretrained(folder / "tokenizer")
    return folder


@pytest.fixture(scope="session")
def tiny_xl() -> LoadedModel:
    """The built-in tiny SDXL-layout model, loaded in memory (fp32, CPU)."""
    return load_model("tiny-xl")


@pytest.fixture(scope="session")
def tiny_xl_folder(tmp_path_factory) -> Path:
    """The tiny SDXL-layout model written by `save_pretrained` in the standard diffusers layout, with the
    scheduler config an SDXL repository ships (Euler, SD's betas)."""
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    parts = builtin.build("tiny-xl")
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        getattr(parts, name).save_pretrained(folder / name)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """A real S3 endpoint on loopback (moto server), reached through the standard AWS variables."""
    process, endpoint = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    stop(process)


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A new empty bucket; returns its name."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint) -> str:
    """One local Ray cluster for the session, joined by this process; subprocess drivers join it through
    RAY_ADDRESS. Started after the S3 variables are set, so its workers see the S3 endpoint. Returns its address.

    Its resources are declared, not detected, so the suite schedules the same on any host: 8 logical CPUs, no
    GPU (a GPU host's GPUs stay out of it: jobs default to GPU actors when the cluster has GPUs), 48 GiB of Ray's
    `memory` resource and a 256 MB object store. The memory is logical (Ray reserves it, nothing allocates it):
    6 GiB per CPU, the most an actor reserves by default (a full-size model on CPU), so CPUs, not memory, limit
    the actors of every test, whatever the machine's RAM; a test about memory starts a cluster of its own.
    """
    import ray

    process, address, _ = start_ray_head(Path(tempfile.mkdtemp(prefix="dsray-")), cpus=8, gpus=0, memory_gib=48,
                                         object_store_mb=256)
    os.environ["RAY_ADDRESS"] = address
    ray.init(address=address, logging_level="WARNING")
    yield address
    ray.shutdown()
    del os.environ["RAY_ADDRESS"]
    stop(process)
