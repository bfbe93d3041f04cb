"""config.yaml against the one schema: defaults, overrides and one-line errors."""

from __future__ import annotations

import copy

import pytest
import yaml

from steelflow.cli import main
from steelflow.config import (
    ConfigError,
    dotted_leaves,
    format_override,
    load,
    parse_override,
    retyped,
    stage_settings,
)
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
        ({"unet.epochs": 1.0}, r"unet.epochs: expected integer, got 1.0"),  # the code counts
        ({"predict.batch_size": True}, r"predict.batch_size: expected integer, got True"),
        (
            {"data.synthetic.n_trian": 5},
            r"unknown key 'n_trian' in 'data.synthetic'; expected one of: jpeg_quality, n_test, n_train, preset",
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
    config = load([ROOT / "config.yaml", ROOT / "configs" / "kaggle.yaml"])
    assert config["data"]["source"] == "kaggle"
    assert config["unet"]["epochs"] == config["classifier"]["epochs"] == 25
    assert config["unet"]["scale"] == 1.0 and config["unet"]["pretrained"] == "imagenet"


def test_the_realistic_config_layers_the_faint_preset_over_config_yaml():
    config = load([ROOT / "config.yaml", ROOT / "configs" / "realistic.yaml"])
    assert config["data"]["synthetic"]["preset"] == "realistic"
    assert (config["unet"]["epochs"], config["classifier"]["epochs"]) == (12, 4)
    assert config["unet"]["class_weights"] == load(ROOT / "config.yaml")["unet"]["class_weights"]


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
        ({"unet.pretrained": "unet"}, r"unet.pretrained: expected one of \['none', 'imagenet'\]"),
        (
            {"classifier.arch": "resnet34"},
            r"classifier.pretrained: unet .* classifier.arch must equal unet.arch \(resnet18\), "
            r"got resnet34",
        ),
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


def test_files_layer_section_by_section_then_overrides(tmp_path):
    """As Snakemake layers config.yaml, each --configfile, then --config."""
    (tmp_path / "base.yaml").write_text("seed: 7\nunet: {epochs: 3, lr: 0.01}\n")
    (tmp_path / "partial.yaml").write_text("unet: {epochs: 2}\n")
    config = load([tmp_path / "base.yaml", tmp_path / "partial.yaml"], {"unet.lr": 1e-4})
    assert config["seed"] == 7  # base
    assert config["unet"]["epochs"] == 2  # partial over base, key by key
    assert config["unet"]["lr"] == 1e-4  # the override last
    assert config["unet"]["batch_size"] == load(ROOT / "config.yaml")["unet"]["batch_size"]


@pytest.mark.parametrize("value", [1e-4, 0.001, 7, "kaggle", None, [5, 5, 1, 1], True, "1"])
def test_overrides_written_for_a_command_line_read_back_the_same(value):
    assert parse_override(format_override("a.b", value)) == ("a.b", value)


def test_numbers_on_the_command_line_read_as_numbers():
    assert parse_override("unet.lr=1e-4") == ("unet.lr", 1e-4)  # YAML 1.1 would say '1e-4'
    assert parse_override("unet.class_weights=[3, 2, 1, 1]")[1] == [3, 2, 1, 1]


def test_text_from_snakemake_sections_is_read_again():
    assert retyped({"epochs": "2", "class_weights": ["3", "1"], "arch": "resnet18"}) == {
        "epochs": 2,
        "class_weights": [3, 1],
        "arch": "resnet18",
    }


def test_sections_flatten_to_dotted_keys():
    assert dotted_leaves({"seed": 7, "unet": {"epochs": 1, "class_weights": [1, 2]}}) == {
        "seed": 7,
        "unet.epochs": 1,
        "unet.class_weights": [1, 2],
    }


def test_the_config_command_prints_the_resolved_experiment_settings(tmp_path, capsys):
    (tmp_path / "partial.yaml").write_text("unet: {epochs: 2}\n")
    out = tmp_path / "resolved.yaml"
    args = [
        "config",
        "--config",
        str(ROOT / "config.yaml"),
        "--config",
        str(tmp_path / "partial.yaml"),
    ]
    assert main([*args, "--set", "seed=3", "--out", str(out)]) == 0
    record = yaml.safe_load(out.read_text())
    assert yaml.safe_load(capsys.readouterr().out) == record
    assert record["seed"] == 3 and record["unet"]["epochs"] == 2
    assert "machine" not in record  # how a machine runs it is not part of the experiment
    expected = load(ROOT / "config.yaml", {"seed": 3, "unet.epochs": 2})
    assert record == {k: v for k, v in expected.items() if k != "machine"}


@pytest.mark.parametrize("key", ["train.workers", "train.threads", "data.synthetic.workers"])
def test_machine_settings_live_in_their_own_section(key):
    with pytest.raises(ConfigError, match="unknown key"):
        load(ROOT / "config.yaml", {key: 1})
    assert set(load(ROOT / "config.yaml")["machine"]) == {"workers", "threads", "draw_workers"}


@pytest.mark.parametrize(
    ("base", "overlay"),
    [
        ({"unet": {"epochs": 6, "lr": 1e-3}, "seed": 1}, {"unet": {"epochs": 2}, "seed": 7}),
        ({"tune": {"gates": [0.1, 0.2]}}, {"tune": {"gates": [0.5]}}),  # a list replaces
        ({"data": {"synthetic": {"n_train": 9}}}, {"data": {"synthetic": {"preset": "x"}}}),
        ({"a": 1}, {"a": {"b": 2}}),  # a mapping over a value
        ({"a": {"b": 2}}, {"a": 1}),  # a value over a mapping
        ({"a": {"b": 2}}, {"a": {}}),
    ],
)
def test_config_files_layer_as_snakemake_layers_them(base, overlay):
    from snakemake.utils import update_config

    from steelflow.config import layer

    ours, snakemakes = copy.deepcopy(base), copy.deepcopy(base)
    layer(ours, overlay)
    update_config(snakemakes, overlay)
    assert ours == snakemakes


@pytest.mark.parametrize(
    ("source", "reruns"),
    [
        ("synthetic", {"seed", "data.synthetic.n_train"}),
        ("local", {"data.local_path"}),
        ("kaggle", set()),  # a new seed or draw downloads nothing again
    ],
)
def test_fetch_reruns_for_what_its_source_reads_and_nothing_else(source, reruns):
    given = {"data.source": source} | ({"data.local_path": "a.zip"} if source == "local" else {})
    base = load([ROOT / "config.yaml"], given)
    changes = {"seed": 7, "data.synthetic.n_train": 9}
    changes |= {"data.local_path": "b.zip"} if source == "local" else {}
    for key, value in changes.items():
        changed = load([ROOT / "config.yaml"], {**given, key: value})
        differs = stage_settings(changed, "fetch") != stage_settings(base, "fetch")
        assert differs == (key in reruns), key


@pytest.mark.parametrize("source", ["synthetic", "kaggle"])
def test_a_local_path_under_another_source_is_refused_not_passed_over(source):
    given = {"data.source": source, "data.local_path": "~/severstal.zip"}
    with pytest.raises(
        ConfigError,
        match=rf"data.local_path is set \(~/severstal.zip\) but "
        rf"data.source is '{source}', which does not read it: set data.source: local",
    ):
        load([ROOT / "config.yaml"], given)
