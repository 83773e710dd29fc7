"""The evaluation command's choices, named without torch, are the library's."""

from diffseg.metrics import PROTOCOLS
from pipeline.evaluation import choices


def test_the_protocols_offered_are_the_ones_the_metrics_take():
    assert choices.PROTOCOLS == PROTOCOLS
