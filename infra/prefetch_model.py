"""Fetch a Hub model's files into the Hugging Face cache (HF_HOME) ahead of a labeling run.

    python infra/prefetch_model.py [MODEL] [--revision REV]      # default CompVis/stable-diffusion-v1-4

It downloads exactly the files diffseg loads (`diffseg.model.HUB_FILES`: configs, tokenizer, fp32 safetensors
of the UNet, VAE and text encoder; no checkpoints, fp16 variants or safety checker), so a cluster's shared
cache is filled once instead of by every GPU worker at the same time, and the workers can then run with
HF_HUB_OFFLINE=1. Weights are never baked into the image (infra/Dockerfile); this runs on a node or as a
Kubernetes Job against the mounted cache volume (infra/kuberay/hf-cache.yaml, infra/cluster-aws.yaml).
Prints the snapshot folder. Exit status 0 when the files are in the cache, 2 when they could not be fetched.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from diffseg.defaults import DEFAULT_MODEL  # noqa: E402
from diffseg.model import HUB_FILES  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infra/prefetch_model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"Hub id (default {DEFAULT_MODEL})")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: the main branch)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if os.path.isdir(os.path.expanduser(args.model)):
        print(f"{args.model} is a local folder: nothing to fetch", file=sys.stderr)
        return 0
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(args.model, revision=args.revision, allow_patterns=HUB_FILES)
    except Exception as error:  # the Hub client raises many unrelated types for "not available"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"error: cannot fetch {args.model!r} into {os.environ.get('HF_HOME', '~/.cache/huggingface')}: "
              f"{first}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
