"""The shell every Ray job's command line shares: its common flags, one style of flag checks, the summary fields
every job reports, and the one plan -> connect -> execute -> disconnect -> summary -> exit status sequence.

Light to import (no Ray): the commands check their flags before anything heavy is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from ..store.location import StorageError

P = TypeVar("P")
J = TypeVar("J")

MAX_RETRY_DELAY = 60.0
"""Longest wait, in seconds, before retrying a failed unit (`executor.Executor`; the --retry-delay help)."""
FAILED_NAMED = 5
"""Failed images a summary names (its `failed_images_file` lists every one)."""


@dataclass
class RunSummary:
    """What a run of a Ray job did, in the fields every job reports; each job's `Summary` adds its own.
    `to_dict()` is the job's last output line."""

    images_ok: int = 0
    images_failed: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    """Wall time of the whole run."""
    output: str = ""
    run_id: str = ""
    failed: list[dict[str, str]] = field(default_factory=list)
    """`{"shard": name, "error": last error}` for each shard that failed for good."""
    in_flight_peak: int = 0
    """Most shards handed to actors at once (at most `IN_FLIGHT_PER_ACTOR` per actor): the driver's backlog
    and the object store's load stay bounded whatever the size of the input."""
    failed_images: list[dict[str, str]] = field(default_factory=list)
    """The first `FAILED_NAMED` images written as errors: `{"image_id", "source_uri", "error", "shard"}`."""
    failed_images_file: str = ""
    """URI of the list of every image written as an error (`_runs/RUN_ID.failures.jsonl`, one JSON object a line,
    as in `failed_images`); "" when there is none."""

    def record(self, shard: str, error: str | None, marker: dict[str, Any] | None) -> None:
        """Count one shard's outcome: failed for good with `error`, or written with `marker`'s row counts (and its
        first failed images, from `OutputDataset.write`'s `failures`)."""
        if error is not None:
            self.shards_failed += 1
            self.failed.append({"shard": shard, "error": error})
            return
        assert marker is not None
        self.shards_written += 1
        self.images_ok += marker["images_ok"]
        self.images_failed += marker["images_failed"]
        named = marker["failures"][:FAILED_NAMED - len(self.failed_images)]
        self.failed_images.extend({**failure, "shard": shard} for failure in named)

    def failures_clause(self) -> str:
        """The part of the one-line account naming the first failed image and where all of them are listed; ""
        when none failed."""
        if not self.failed_images:
            return ""
        first = self.failed_images[0]
        return f"; failed images listed in {self.failed_images_file}, the first: {first['image_id']}: {first['error']}"

    def to_dict(self) -> dict[str, Any]:
        """All fields, every `*seconds` rounded to ms."""
        return {key: round(value, 3) if key.endswith("seconds") else value for key, value in asdict(self).items()}


def add_ray_arguments(parser: argparse.ArgumentParser, actors_help: str) -> None:
    """The flags every Ray job takes: how many actors (`actors_help` says what one is), retries, storage options,
    the cluster's address and the progress bar."""
    parser.add_argument("--num-actors", type=int, default=None, help=actors_help)
    parser.add_argument("--max-retries", type=int, default=5, help="further attempts per failed shard (default 5)")
    parser.add_argument("--retry-delay", type=float, default=5.0,
                        help=f"seconds before a failed shard's first retry, doubling for each further one up to "
                             f"{MAX_RETRY_DELAY:g} (default 5)")
    parser.add_argument("--storage-options", default=None,
                        help="JSON object of fsspec options for input and output")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address, or auto for a running local one (default: RAY_ADDRESS, else a new "
                             "local Ray)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def ray_minimums(args: argparse.Namespace) -> list[tuple[str, float | None, float]]:
    """The `check_at_least` triples of the flags `add_ray_arguments` adds."""
    return [("--num-actors", args.num_actors, 1), ("--max-retries", args.max_retries, 0),
            ("--retry-delay", args.retry_delay, 0)]


def check_at_least(minimums: Iterable[tuple[str, float | None, float]]) -> None:
    """Raise `ValueError` naming the first `(flag, value, least)` whose value is set and below its least."""
    for flag, value, least in minimums:
        if value is not None and value < least:
            raise ValueError(f"{flag} must be at least {least:g}, got {value:g}")


def job_or_exit(make: Callable[[argparse.Namespace], J], args: argparse.Namespace) -> J:
    """`make(args)`, the job the flags describe; a bad value (`ValueError`, `StorageError`: bad storage options)
    is one line on stderr and exit status 2, before anything heavy is imported."""
    try:
        return make(args)
    except (ValueError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_ray_job(plan: Callable[[], P], needs_ray: Callable[[P], bool], execute: Callable[[P], RunSummary],
                address: str | None, errors: tuple[type[BaseException], ...],
                describe: Callable[[Any], str]) -> int:
    """Plan (no Ray), connect when `needs_ray(planned)`, execute, disconnect; then the one-line account
    `describe(summary)`, with the first failed image (`RunSummary.failures_clause`), on stderr and the JSON summary
    as the last line on stdout. Returns the exit status: 0 every shard written, 1 some shard failed for good, 2 one
    of `errors` (printed as one line: bad input, an output made otherwise, a job that cannot start)."""
    from .cluster import connect, disconnect  # Ray, only once the flags were checked

    try:
        planned = plan()
        if needs_ray(planned):
            connect(address)
        summary = execute(planned)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        disconnect()
    print(describe(summary) + summary.failures_clause(), file=sys.stderr)
    print(json.dumps(summary.to_dict()), flush=True)
    return 1 if summary.shards_failed else 0
