"""The registry: typed options per builder (a misspelt option is an error), one release-file table, restore."""

from __future__ import annotations

import dataclasses

import pytest

from lookalike.common.errors import ConfigError, UnknownName
from lookalike.metric import MetricCfg, get_metric_cfg, is_metric, list_metrics, register_metric, required_files
from lookalike.metric._pretrained import metric_cfg_from_dict
from lookalike.metric._registry import _OPTIONS
from lookalike.metric.ensemble import PerceptualOptions
from lookalike.metric.releases import RELEASE_FILES, release_file


def test_every_metric_has_its_builders_options_type() -> None:
    for name in list_metrics(include_test=True):
        cfg = get_metric_cfg(name)
        cls = _OPTIONS[cfg.builder]
        assert (cfg.options is None) if cls is None else isinstance(cfg.options, cls), name


def test_misspelt_option_is_an_error(registry) -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['centre'\].*valid: \['center', 'seed'\]"):
        register_metric(MetricCfg(name="test_typo", builder="perceptual", backbones=("test_vit_tiny",),
                                  options={"centre": False}))
    assert not is_metric("test_typo")
    cfg = register_metric(MetricCfg(name="test_typo", builder="perceptual", backbones=("test_vit_tiny",),
                                    options={"center": False}))
    assert cfg.options == PerceptualOptions(center=False) and get_metric_cfg("test_typo").options.center is False
    with pytest.raises(ConfigError, match="must be a PerceptualOptions"):
        register_metric(MetricCfg(name="test_typo2", builder="perceptual", options=["center"]))
    with pytest.raises(ConfigError, match="measure"):
        register_metric(MetricCfg(name="test_typo3", builder="pixel", kind="pairwise", options={}))  # required field
    with pytest.raises(UnknownName, match="unknown builder 'nope'"):
        register_metric(MetricCfg(name="test_typo4", builder="nope"))


def test_registry_fixture_restores(registry) -> None:
    register_metric(MetricCfg(name="test_temporary", builder="perceptual", backbones=("test_vit_tiny",)))
    assert is_metric("test_temporary")


def test_test_only_metrics_are_hidden_from_users_but_load_by_name() -> None:
    assert "test_vit_tiny" not in list_metrics() and "test_vit_tiny" in list_metrics(include_test=True)
    assert "test_vit_tiny" not in list_metrics(kind="embedding") and get_metric_cfg("test_vit_tiny").test_only
    assert not any(get_metric_cfg(n).test_only for n in list_metrics())
    assert is_metric("test_vit_tiny")  # still a registered name: tests and plumbing load it


def test_registry_fixture_restored_the_table() -> None:
    assert not is_metric("test_temporary") and not is_metric("test_typo")


def test_every_released_file_comes_from_the_one_table() -> None:
    for name in list_metrics():  # users' metrics only: test-only ones have no released files
        for wf in required_files(get_metric_cfg(name)):
            assert RELEASE_FILES.get(wf.path) == wf, (name, wf.path)
    assert release_file("alex.pth").sha256 and release_file("alex.pth").size == 6009
    with pytest.raises(UnknownName, match="no released weight file"):
        release_file("nope.pth")


def test_metric_from_a_dict_is_checked() -> None:
    d = {"name": "from_file", "builder": "perceptual", "backbones": ["test_vit_tiny"],
         "preprocess": {"size": 96, "resize_mode": "shorter_center_crop"}, "options": {"seed": 3}}
    cfg = metric_cfg_from_dict(d)
    assert cfg.backbones == ("test_vit_tiny",) and cfg.preprocess.size == 96 and cfg.options == {"seed": 3}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sise'\]"):
        metric_cfg_from_dict({**d, "preprocess": {"sise": 96}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['backbone'\]"):
        metric_cfg_from_dict({"name": "x", "builder": "perceptual", "backbone": ["a"]})
    assert dataclasses.is_dataclass(PerceptualOptions)


def test_load_metric_options_override_one_load() -> None:
    from lookalike.metric import load_metric

    m = load_metric("test_vit_tiny", device="cpu", center=False)
    assert m.center is False and get_metric_cfg("test_vit_tiny").options.center is True  # the registry is untouched
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['centre'\]"):
        load_metric("test_vit_tiny", device="cpu", centre=False)
    with pytest.raises(ConfigError, match="takes no options|unknown option"):
        load_metric("psnr", device="cpu", center=False)
