"""The one scheduling loop, on a real local Ray cluster, with small actors whose work is a string."""

import os
import time
from pathlib import Path

import pytest
import ray

from pipeline.execution import executor
from pipeline.execution.executor import IN_FLIGHT_PER_ACTOR, Executor

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_cluster")]


@ray.remote(num_cpus=0.5, max_restarts=-1, max_task_retries=0, max_concurrency=IN_FLIGHT_PER_ACTOR)
class Worker:
    """Upper-cases its unit after `seconds`; "fail..." units raise; a "die..." unit kills the actor's process the
    first time it is seen (a file under `folder` remembers it across the restart)."""

    def __init__(self, folder: str, seconds: float = 0.0) -> None:
        self.folder, self.seconds = Path(folder), seconds

    def work(self, unit: str) -> str:
        time.sleep(self.seconds)
        if unit.startswith("fail"):
            raise ValueError(f"cannot work on {unit}")
        if unit.startswith("die") and not (self.folder / unit).exists():
            (self.folder / unit).touch()
            os._exit(1)
        return unit.upper()


def work(actor, unit: str) -> ray.ObjectRef:
    return actor.work.remote(unit)


def run(pool: Executor, units, **options) -> dict[str, tuple]:
    return {outcome.unit: (outcome.result, outcome.error) for outcome in pool.map(work, units, progress=False,
                                                                                   **options)}


def test_every_unit_runs_once_and_no_actor_holds_more_than_its_share(tmp_path):
    pool = Executor([Worker.remote(str(tmp_path), 0.2) for _ in range(2)], max_retries=0, retry_delay=0)
    units = [f"unit-{i}" for i in range(9)]
    assert run(pool, units) == {unit: (unit.upper(), None) for unit in units}
    assert pool.in_flight_peak == 2 * IN_FLIGHT_PER_ACTOR and pool.retries == 0


def test_a_unit_that_keeps_failing_is_retried_with_doubling_delays_then_given_up_alone(tmp_path, capfd):
    pool = Executor([Worker.remote(str(tmp_path))], max_retries=2, retry_delay=0.3)
    started = time.monotonic()
    outcomes = run(pool, ["fail-x", "ok"])
    assert time.monotonic() - started >= 0.3 + 0.6
    assert outcomes == {"ok": ("OK", None), "fail-x": (None, "ValueError: cannot work on fail-x")}
    assert pool.retries == 2
    err = capfd.readouterr().err
    assert "shard fail-x will be retried in 0.3 s: ValueError" in err and "retried in 0.6 s" in err
    assert "shard fail-x failed for good: ValueError: cannot work on fail-x" in err


def test_an_actor_that_died_is_set_aside_until_its_probe_answers_and_its_unit_retried(tmp_path):
    probed = []

    def probe(actor):
        probed.append(actor)
        return actor.__ray_ready__.remote()

    pool = Executor([Worker.remote(str(tmp_path))], max_retries=1, retry_delay=0.1, probe=probe)
    assert run(pool, ["die-1", "ok"]) == {"die-1": ("DIE-1", None), "ok": ("OK", None)}
    assert pool.retries >= 1 and len(probed) >= 1 and pool.usable == {0}


def test_an_actor_whose_probe_answer_is_refused_stays_aside_and_the_units_are_given_up(tmp_path, monkeypatch):
    monkeypatch.setattr(executor, "LOST_ACTORS_TIMEOUT", 1.0)
    pool = Executor([Worker.remote(str(tmp_path))], max_retries=3, retry_delay=0.1, answered=lambda answer: False)
    outcomes = run(pool, ["die-1", "a", "b"])
    assert pool.usable == set()
    assert {unit for unit, (_, error) in outcomes.items() if error} >= {"die-1"}
    assert all("no actor left for 1 s" in error for _, error in outcomes.values() if error)


def test_units_are_read_as_they_are_handed_out_and_a_line_comes_while_none_finishes(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(executor, "REPORT_EVERY", 0.5)
    read = []

    def units():
        for i in range(3):
            read.append(i)
            yield f"unit-{i}"

    pool = Executor([Worker.remote(str(tmp_path), 1.5)], max_retries=0, retry_delay=0)
    outcomes = pool.map(work, units(), desc="working", progress=False)
    first = next(outcomes)
    assert read == [0, 1], "read only as far as the actor takes units"
    assert first.result in ("UNIT-0", "UNIT-1")
    assert len(list(outcomes)) == 2
    assert "working: 2 shard(s) in progress on 1 actor(s), 0 of 2 listed so far done, 0 waiting to be retried; " \
           "no shard finished in the last 0.5 s" in capfd.readouterr().err
