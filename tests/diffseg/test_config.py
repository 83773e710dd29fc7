import dataclasses

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


def test_diffcut_defaults_are_its_papers_setting():
    config = DiffSegConfig(method="diffcut")
    assert (config.timestep, config.resolution, config.ncut_threshold, config.alpha, config.pamr) == \
        (50, 1024, 0.5, 10.0, False)
    assert config == DiffSegConfig(method="diffcut", timestep=50, resolution=1024)


def test_a_config_describes_only_the_settings_its_method_uses():
    diffcut = DiffSegConfig(method="diffcut").to_dict()
    assert {"ncut_threshold", "alpha", "pamr"} <= set(diffcut) and "kl_threshold" not in diffcut
    assert "ncut_threshold" not in DiffSegConfig().to_dict()
    # Settings of the other method cannot change the masks, so they do not change the hash either.
    assert DiffSegConfig(method="diffcut").config_hash() == \
        DiffSegConfig(method="diffcut", kl_threshold=0.9).config_hash()
    assert DiffSegConfig().config_hash() == DiffSegConfig(alpha=4).config_hash()
    assert DiffSegConfig(method="diffcut").config_hash() != \
        DiffSegConfig(method="diffcut", ncut_threshold=0.4).config_hash()


def test_diffseg_hashes_are_those_from_before_diffcut():
    """Outputs written before DiffCut existed keep resuming: the default config's hash is pinned."""
    assert DiffSegConfig().config_hash() == "b8b0096078357364"


def test_diffseg_describes_pamr_only_when_it_is_on():
    """PAMR came to DiffSeg after its first outputs: without it a config keeps its description and hash (pinned
    above); with it, both change."""
    for config in (DiffSegConfig(), DiffSegConfig(kl_threshold=0.9, refine=True)):
        with_pamr = dataclasses.replace(config, pamr=True)
        assert "pamr" not in config.to_dict() and with_pamr.to_dict() == {**config.to_dict(), "pamr": True}
        assert with_pamr.config_hash() != config.config_hash()
    assert DiffSegConfig(pamr=False).config_hash() == "b8b0096078357364"
    # DiffCut always described it: its hash covers pamr off as well.
    assert DiffSegConfig(method="diffcut").to_dict()["pamr"] is False


@pytest.mark.parametrize("bad", [
    dict(ncut_threshold=0), dict(ncut_threshold=2.5), dict(alpha=0), dict(pamr=True, method="kmeans-c"),
    dict(method="diffcut", refine=True), dict(method="ncut"),
])
def test_invalid_diffcut_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DiffSegConfig(**bad)
