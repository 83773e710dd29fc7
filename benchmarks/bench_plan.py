"""Planning benchmark: listing and sharding millions of keys, a first run and a re-run after the input grew.

The input is synthetic: a filesystem whose folders of 1,000 keys are made up as they are listed (nothing is
stored, so what is measured is the driver's own memory), `--files` keys in all, each with a size and an etag as
an object store gives them. The job's own `plan` lists it and its shards are taken one after the other, as the
scheduler hands them to actors, without Ray: each is recorded finished (its `_done/` marker written, outside the
timings), so that a second run, after `--grow` of the input (new keys spread among the old ones, in every
folder) was added, plans against them. Prints, for each run, the time to the first shard ready to dispatch, the
whole planning time, the files and shards planned, and the peak of the Python heap (tracemalloc, which slows
the run down).

    python benchmarks/bench_plan.py [--files 1000000] [--grow 0.01] [--shard-size 1000] [--json FILE]

Smoke run: `--files 2000`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.labeling.driver import plan  # noqa: E402
from pipeline.labeling.job import LabelJob  # noqa: E402
from pipeline.labeling.output import DONE  # noqa: E402
from pipeline.labeling.sources import Shard  # noqa: E402

PER_FOLDER = 1000
ROOT = "data"


class SyntheticFileSystem(AbstractFileSystem):
    """`synthetic://data`: `files` keys `FFFFF/NNNNNNNN.jpg` in folders of `PER_FOLDER`, and with `grow` one new key
    `NNNNNNNN-new.jpg` beside every `1 / grow`-th one (it sorts among the old ones, in every folder)."""

    protocol = "synthetic"

    def __init__(self, files: int = 0, grow: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.count = files
        self.every = round(1 / grow) if grow else 0

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
        path = self._strip_protocol(path)
        if path == ROOT:
            entries = [{"name": f"{ROOT}/{folder:05d}", "type": "directory", "size": 0}
                       for folder in range(-(-self.count // PER_FOLDER))]
        elif path.startswith(f"{ROOT}/") and path.count("/") == 1 and path[len(ROOT) + 1:].isdigit():
            entries = self._folder(path, int(path[len(ROOT) + 1:]))
        else:
            raise FileNotFoundError(path)
        return entries if detail else [entry["name"] for entry in entries]

    def _folder(self, path: str, folder: int) -> list[dict[str, Any]]:
        entries = []
        for index in range(folder * PER_FOLDER, min(self.count, (folder + 1) * PER_FOLDER)):
            entries.append({"name": f"{path}/{index:08d}.jpg", "type": "file", "size": 50_000, "ETag": f'"{index:x}"'})
            if self.every and index % self.every == 0:
                entries.append({"name": f"{path}/{index:08d}-new.jpg", "type": "file", "size": 50_000,
                                "ETag": f'"{index:x}-new"'})
        return entries


def run(job: LabelJob) -> dict[str, Any]:
    """Plan `job` and take every shard of it, each recorded finished; returns the figures of this run."""
    tracemalloc.reset_peak()
    started = time.perf_counter()
    planned = plan(job)
    first = time.perf_counter() - started
    files = shards = 0
    recording = 0.0
    for shard in planned.todo:
        files, shards = files + len(shard.files), shards + 1
        paused = time.perf_counter()
        record(planned.output.location, shard)
        recording += time.perf_counter() - paused
    planning = time.perf_counter() - started - recording
    comparison = planned.comparison
    return {"first_shard_s": first, "planning_s": planning, "files": files, "shards": shards,
            "files_new": comparison.new, "files_changed": len(comparison.changed),
            "files_vanished": len(comparison.vanished), "shards_skipped": planned.skipped,
            "peak_mib": tracemalloc.get_traced_memory()[1] / 2**20}


def record(output: Any, shard: Shard) -> None:
    """The `_done/` marker an actor writes when it finished `shard` (`OutputDataset.write`), without its masks."""
    files = [{"key": f.key, "size": f.size, "etag": f.etag, "mtime": f.mtime} for f in shard.files]
    output.write(f"{DONE}/{shard.name}.json", json.dumps({"shard": shard.name, "file": f"{shard.name}.parquet",
                                                          "rows": len(files), "files": files}).encode())


def show(name: str, figures: dict[str, Any]) -> None:
    print(f"{name}: first shard after {figures['first_shard_s']:.2f} s, planned in {figures['planning_s']:.1f} s: "
          f"{figures['files']} files in {figures['shards']} shards ({figures['shards_skipped']} finished ones kept), "
          f"Python heap peak {figures['peak_mib']:.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--grow", type=float, default=0.01, help="new keys before the re-run, as a share of --files")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    fsspec.register_implementation(SyntheticFileSystem.protocol, SyntheticFileSystem, clobber=True)
    tracemalloc.start()
    with tempfile.TemporaryDirectory() as folder:
        def job(grow: float) -> LabelJob:
            # The output is a local folder; its filesystem ignores the synthetic one's options.
            return LabelJob(input=f"synthetic://{ROOT}", output=str(Path(folder) / "out"), model="noop",
                            shard_size=args.shard_size, storage_options={"files": args.files, "grow": grow})

        print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}", flush=True)
        first = run(job(0.0))
        show(f"first run, {args.files} keys", first)
        rerun = run(job(args.grow))
        show(f"re-run after {args.grow:.0%} more keys", rerun)
    figures = {"files": args.files, "grow": args.grow, "shard_size": args.shard_size, "first": first,
               "rerun": rerun, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"process peak RSS {figures['peak_rss_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
