"""config.yaml against the one schema: defaults, overrides and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from steelflow.config import ConfigError, load, parse_override
from tests.conftest import ROOT


def test_default_config_is_valid_and_complete():
    config = load(ROOT / "config.yaml")
    assert config["seed"] == 42


def test_defaults_fill_missing_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert load(path)["seed"] == 42


def test_overrides_use_dotted_keys():
    assert load(ROOT / "config.yaml", {"seed": 7})["seed"] == 7
    assert parse_override("data.n_train=12") == ("data.n_train", 12)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("seed")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sede": 1}, r"unknown key 'sede' at the top level; expected one of: seed"),
        ({"seed": "many"}, r"seed: expected integer, got 'many'"),
        ({"seed": -1}, r"seed: expected a value >= 0, got -1"),
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
