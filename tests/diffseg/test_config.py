import pytest

from diffseg import DiffSegConfig


def test_defaults_are_the_papers_setting():
    config = DiffSegConfig()
    assert config.thresholds == (1.1, 1.1, 1.1)
    assert (config.num_points, config.timestep, config.resolution, config.crop) == (16, 300, 512, "none")
    assert config.weights is None and config.refine is False


def test_a_sequence_of_thresholds_sets_one_per_pass():
    assert DiffSegConfig(kl_threshold=[0.9, 1.0]).thresholds == (0.9, 1.0)


def test_hash_identifies_settings_that_change_masks():
    assert DiffSegConfig().config_hash() == DiffSegConfig(kl_threshold=(1.1, 1.1, 1.1)).config_hash()
    assert DiffSegConfig().config_hash() != DiffSegConfig(kl_threshold=0.9).config_hash()
    assert DiffSegConfig().config_hash() != DiffSegConfig(crop="center").config_hash()


@pytest.mark.parametrize("bad", [
    dict(kl_threshold=0), dict(kl_threshold=[]), dict(num_points=1), dict(timestep=1000),
    dict(resolution=500), dict(crop="middle"), dict(weights=[0, 0]),
])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DiffSegConfig(**bad)
