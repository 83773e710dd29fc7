import torch

from benchmarks.timing import timed


def test_a_step_is_timed_after_a_warm_up_and_its_last_result_returned():
    calls = []
    result, seconds = timed(lambda: calls.append(len(calls)) or len(calls), repeat=3, device=torch.device("cpu"))
    assert (calls, result) == ([0, 1, 2, 3], 4), "one warm-up run, then three timed ones"
    assert 0 <= seconds < 1


def test_a_single_run_is_timed_without_a_warm_up():
    calls = []
    timed(lambda: calls.append(1), repeat=1, device=torch.device("cpu"))
    assert calls == [1]
