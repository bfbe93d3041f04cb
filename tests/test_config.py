"""config.yaml against the one schema: defaults, overrides and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from steelflow.config import ConfigError, load, parse_override
from tests.conftest import ROOT


def test_default_config_is_valid_and_complete():
    config = load(ROOT / "config.yaml")
    assert config["seed"] == 42
    assert (
        config["data"]["source"] == "synthetic" and config["data"]["synthetic"]["preset"] == "clear"
    )


def test_defaults_fill_missing_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    config = load(path)
    assert config["seed"] == 42
    assert (
        config["data"]["synthetic"]["n_train"]
        == load(ROOT / "config.yaml")["data"]["synthetic"]["n_train"]
    )


def test_overrides_use_dotted_keys():
    assert load(ROOT / "config.yaml", {"seed": 7})["seed"] == 7
    assert (
        load(ROOT / "config.yaml", {"data.synthetic.n_train": 9})["data"]["synthetic"]["n_train"]
        == 9
    )
    assert parse_override("data.n_train=12") == ("data.n_train", 12)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("seed")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sede": 1},
            r"unknown key 'sede' at the top level; expected one of: (\w+, )*seed, split",
        ),
        ({"seed": "many"}, r"seed: expected integer, got 'many'"),
        ({"seed": -1}, r"seed: expected a value >= 0, got -1"),
        (
            {"data.synthetic.n_trian": 5},
            r"unknown key 'n_trian' in 'data.synthetic'; expected one of: jpeg_quality, n_test, n_train, preset, workers",
        ),
        ({"data.synthetic.n_train": 0}, r"data.synthetic.n_train: expected a value >= 1, got 0"),
        (
            {"data.synthetic.jpeg_quality": 101},
            r"data.synthetic.jpeg_quality: expected a value <= 100, got 101",
        ),
        (
            {"data.source": "s3"},
            r"data.source: expected one of \['synthetic', 'kaggle', 'local'\], got 's3'",
        ),
    ],
)
def test_bad_values_give_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(ROOT / "config.yaml", overrides)
    assert "\n" not in str(info.value) and "config.yaml" in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(tmp_path / "list.yaml")


def test_the_kaggle_config_is_valid_and_asks_for_real_data_settings():
    config = load(ROOT / "configs" / "kaggle.yaml")
    assert config["data"]["source"] == "kaggle"
    assert config["unet"]["epochs"] == config["classifier"]["epochs"] == 25
    assert config["unet"]["scale"] == 1.0 and config["unet"]["pretrained"] == "imagenet"


def test_the_schema_defaults_are_the_values_of_config_yaml():
    """One set of defaults: an empty config is config.yaml, key for key."""
    from steelflow.config import validate

    assert validate({}) == yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"classifier.crop_width": 384}, r"unknown key 'crop_width' in 'classifier'"),
        ({"classifier.loss": "bce_dice"}, r"unknown key 'loss' in 'classifier'"),
        ({"unet.head": "binary"}, r"unknown key 'head' in 'unet'"),
    ],
)
def test_each_network_accepts_only_its_own_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(ROOT / "config.yaml", overrides)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"seed: [1,\n", "not a YAML config file"),  # truncated
        (b"PK\x03\x04\x00\xff\xfe\x80binary", "not a YAML config file"),  # a zip, not YAML
    ],
)
def test_a_broken_config_file_is_named_in_one_line(tmp_path, content, message):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
