"""Strict config loading: YAML, overrides, type and key errors."""

import pytest

from edgesmith.errors import ConfigError
from trainer.config import apply_override, config_from_dict, load_config_file


def test_yaml_and_overrides_land_in_nested_dataclasses(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  name: resnet8\noptim:\n  lr: 0.3\nepochs: 2\n")
    data = load_config_file(f)
    apply_override(data, "optim.lr=0.05")
    apply_override(data, "augment.cutout=8")
    apply_override(data, "data.image_size=[16, 16]")
    cfg = config_from_dict(data)
    assert cfg.model.name == "resnet8"
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.augment.cutout == 8
    assert cfg.data.image_size == [16, 16]
    assert cfg.epochs == 2


def test_scientific_notation_without_a_dot_is_a_number():
    data = {}
    apply_override(data, "optim.weight_decay=1e-4")  # YAML 1.1 would read this as a string
    assert config_from_dict(data).optim.weight_decay == 1e-4
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got str 'fast'"):
        config_from_dict({"optim": {"lr": "fast"}})


def test_int_widens_to_float_but_float_is_not_an_int():
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0
    with pytest.raises(ConfigError, match="epochs: expected an integer, got float"):
        config_from_dict({"epochs": 2.5})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"optim": {"lrr": 0.1}}, r"unknown config key 'optim.lrr'; valid keys in optim: name, lr"),
        ({"modle": {}}, r"unknown config key 'modle'; valid keys in config: model, data"),
        ({"optim": {"name": "adam"}}, r"optim.name: invalid value 'adam'; choose from: sgd, adamw"),
        ({"device": "tpu"}, r"device: invalid value 'tpu'; choose from: auto, cpu, cuda"),
        ({"channels_last": "yes"}, r"channels_last: expected true or false"),
        ({"epochs": 0}, r"epochs: expected an integer >= 1, got 0"),
        ({"optim": {"label_smoothing": 1.5}}, r"label_smoothing: expected in \[0, 1\)"),
        ({"data": {"image_size": [32]}}, r"data.image_size"),
        ({"optim": 3}, r"optim: expected a mapping"),
    ],
)
def test_bad_config_is_one_clear_error(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_override_errors():
    with pytest.raises(ConfigError, match="expects key=value"):
        apply_override({}, "optim.lr")
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        apply_override({}, "optim.lrr=1")
    with pytest.raises(ConfigError, match="'optim' is a section"):
        apply_override({}, "optim=1")
    with pytest.raises(ConfigError, match="'epochs' is a value, not a section"):
        apply_override({}, "epochs.x=1")


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)


def test_shipped_example_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[2] / "examples" / "configs").glob("*.yaml"))
    assert configs, "examples/configs/ should ship configs"
    for path in configs:
        config_from_dict(load_config_file(path))
