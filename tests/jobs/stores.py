"""Stores a job cannot use, as a user meets them: no credentials anywhere, an endpoint where nothing listens."""

import json
import os
from pathlib import Path

from tests.cluster import free_port


def without_credentials(folder: Path) -> dict[str, str]:
    """The environment of a job run where botocore finds no credentials: no AWS variable, credentials and config
    files that do not exist, no instance metadata to wait for."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    return {**env, "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-credentials"),
            "AWS_CONFIG_FILE": str(folder / "no-config"), "AWS_EC2_METADATA_DISABLED": "true"}


def at_endpoint(endpoint: str) -> str:
    """`--storage-options` for an S3 endpoint, the keys given: the endpoint is the only thing that can fail."""
    return json.dumps({"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}})


def nothing_listening() -> str:
    """An endpoint URL on loopback where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


NO_CREDENTIALS = ("no credentials found (Unable to locate credentials); set AWS_ACCESS_KEY_ID and "
                  "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give key and secret in --storage-options")
"""The end of the line naming a location without credentials."""


def does_not_answer(endpoint: str, path: str) -> str:
    """The end of the line naming a location whose endpoint does not answer (`path`: bucket/key asked for)."""
    return (f'the store does not answer (Could not connect to the endpoint URL: "{endpoint}/{path}"); check its '
            "endpoint URL (AWS_ENDPOINT_URL, or client_kwargs.endpoint_url in --storage-options) and the network")
