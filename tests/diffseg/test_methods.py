"""The method registry as a specification: every registered method has what the rest of the code looks up."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from diffseg.arguments import OneLineParser, add_algorithm_arguments
from diffseg.config import DiffSegConfig
from diffseg.methods import METHODS, Method, spoken, unused_fields, variant_method
from diffseg.segmenter import memory_per_image

CONFIG_FIELDS = {field.name for field in dataclasses.fields(DiffSegConfig)}
EVALUATE = Path(__file__).resolve().parents[2] / "jobs" / "evaluate.py"


@pytest.fixture(params=list(METHODS), ids=list(METHODS))
def method(request) -> Method:
    return METHODS[request.param]


def test_a_method_is_registered_under_its_name_and_the_default_is_one(method):
    assert METHODS[method.name] is method and method.paper and method.summary
    assert DiffSegConfig.method in METHODS


def test_its_defaults_are_what_a_config_of_it_gets(method):
    config = DiffSegConfig(method=method.name)
    assert (config.timestep, config.resolution) == (method.timestep, method.resolution)
    assert 0 <= method.timestep <= 999 and method.resolution % 64 == 0


def test_its_settings_are_config_fields_and_its_config_describes_them_only(method):
    assert set(method.fields) <= CONFIG_FIELDS and set(method.flags) <= set(method.fields)
    assert set(method.later_fields) <= set(method.fields)
    described = set(DiffSegConfig(method=method.name).to_dict())
    # Fields added later are described only away from their default (a flag's default is off).
    assert described & set(method.fields) == set(method.fields) - set(method.later_fields)
    assert not described & unused_fields(method)
    for flag in set(method.later_fields) & set(method.flags):
        assert flag in DiffSegConfig(method=method.name, **{flag: True}).to_dict()


def test_its_flags_are_refused_with_every_method_without_them(method):
    assert all(isinstance(getattr(DiffSegConfig, flag), bool) for flag in method.flags)
    for flag in method.flags:
        DiffSegConfig(method=method.name, **{flag: True})
        owners = [other.name for other in METHODS.values() if flag in other.flags]
        for other in set(METHODS) - set(owners):
            with pytest.raises(ValueError, match=f"{flag} applies to the {spoken(owners, 'and')} method"):
                DiffSegConfig(method=other, **{flag: True})


def test_its_forward_captures_attention_or_features(method):
    assert method.capture in ("attention", "features")


def test_its_post_processing_module_has_plain_and_scored_label_maps(method):
    module = method.post_processing()
    assert callable(module.labels) and callable(module.scored)
    if method.capture == "attention":  # the shared attention pipeline (`segment.segment_images`) asks it for these
        assert callable(module.proposals)


def test_its_center_crop_is_a_square_inside_the_image(method):
    for width, height in ((640, 480), (480, 643), (1, 1), (512, 512)):
        left, top, side = method.center_square(width, height)
        assert side >= 1 and 0 <= left <= width - side and 0 <= top <= height - side


def test_its_memory_per_image_is_known(method):
    assert method.unet_memory > 0
    assert memory_per_image(method.name, "sd", method.resolution, torch.float16) > 0


def test_its_evaluation_variants_lead_back_to_it(method):
    assert method.variants
    for variant in method.variants:
        assert variant_method(variant.name) == (method, variant)
        assert isinstance(variant.settings(DiffSegConfig(method=method.name)), str)
    assert method.threshold is None or isinstance(getattr(DiffSegConfig(method=method.name), method.threshold),
                                                  float)


def test_variant_names_are_unique():
    names = [variant.name for method in METHODS.values() for variant in method.variants]
    assert len(names) == len(set(names))
    with pytest.raises(KeyError):
        variant_method("ncut")


def test_the_cli_method_choices_come_from_the_table():
    parser = OneLineParser()
    add_algorithm_arguments(parser)
    assert list(_method_choices(parser)) == list(METHODS)


def test_the_evaluation_method_choices_are_every_methods_variants():
    spec = importlib.util.spec_from_file_location("evaluate_script", EVALUATE)
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    assert list(_method_choices(evaluate.parser())) == [variant.name for method in METHODS.values()
                                                        for variant in method.variants]


def test_a_variant_name_says_pamr_when_it_is_on():
    for method in METHODS.values():
        if "pamr" in method.flags:
            for variant in method.variants:
                plain = variant.settings(DiffSegConfig(method=method.name))
                assert variant.settings(DiffSegConfig(method=method.name, pamr=True)) == plain + " pamr"


def test_default_configs_keep_their_hashes():
    """Output manifests name their config's hash: the registry must not change them."""
    assert {name: DiffSegConfig(method=name).config_hash() for name in METHODS} == {
        "diffseg": "b8b0096078357364", "kmeans-c": "0f0cdc6f43552216", "diffcut": "76c351085a669244",
        "kway": "bb56ec8e78b44736"}


def _method_choices(parser) -> list[str]:
    return next(action.choices for action in parser._actions if action.dest == "method")
