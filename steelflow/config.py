"""Load config.yaml and validate it against the package's one JSON schema (config.schema.yaml)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from steelflow.errors import SteelflowError

SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


EVERY = None  # a stage that reads every section but machine
STAGE_SECTIONS = {  # the config sections each stage reads: a change reruns it
    "config": EVERY,
    "fetch": ("seed", "data"),
    "masks": (),
    "eda": ("seed", "eda"),
    "split": ("seed", "split"),
    "train_classifier": ("seed", "split", "train", "augment", "classifier"),
    "train_unet": ("seed", "split", "train", "augment", "unet"),
    "tune": ("split", "train", "tune", "predict"),
    "submit": ("train", "predict", "submit"),
    "score": (),
    "bundle": EVERY,
}


def stage_settings(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The settings ``stage`` reads (STAGE_SECTIONS), never ``machine``; a training
    stage's leave out train.folds, since which other folds train does not change one."""
    if stage == "fetch":
        return fetch_settings(config)
    sections = STAGE_SECTIONS[stage]
    if sections is EVERY:
        sections = [s for s in config if s != "machine"]
    chosen = {section: config[section] for section in sections}
    if stage.startswith("train_"):
        chosen["train"] = {k: v for k, v in chosen["train"].items() if k != "folds"}
    return chosen


def local_path(given: str) -> Path:
    """``data.local_path`` as a path: ``~`` and environment variables expanded."""
    return Path(os.path.expandvars(given)).expanduser()


def fetch_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What fetch reads of its source: the seed and draw of a synthetic set, the path of a
    local one, nothing more of the kaggle download (a new seed downloads nothing again)."""
    data = config["data"]
    source = data["source"]
    if source == "synthetic":
        return {"seed": config["seed"], "data": {"source": source, "synthetic": data["synthetic"]}}
    if source == "local":
        return {"data": {"source": source, "local_path": data["local_path"]}}
    return {"data": {"source": source}}


class ConfigError(SteelflowError):
    """A config that does not match the schema; the message names the key."""


def _describe(error) -> str:
    """One line naming the key at fault and what the schema expected."""
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    rule, expected, value = error.validator, error.validator_value, error.instance
    if rule == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed))
        where = f"in '{key}'" if error.absolute_path else "at the top level"
        names = ", ".join(map(repr, unknown))
        return f"unknown key {names} {where}; expected one of: {', '.join(allowed)}"
    if rule == "type":
        return f"{key}: expected {expected}, got {value!r}"
    if rule == "enum":
        return f"{key}: expected one of {expected}, got {value!r}"
    if rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return f"{key}: expected a value {op[rule]} {expected}, got {value!r}"
    return f"{key}: {error.message}"


def _filling_defaults(validator_class):
    """A jsonschema validator that fills in each missing property's default as it
    validates (as snakemake.utils.validate does with set_default)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if "default" in subschema and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    from jsonschema import validators

    return validators.extend(validator_class, {"properties": properties})


def _strict_integers(validator_class):
    """The validator with ``integer`` meaning an int: JSON Schema counts 1.0 as one,
    but the code counts epochs and batches with it."""
    from jsonschema import validators

    checker = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return validators.extend(validator_class, type_checker=checker)


def validate(config: dict[str, Any], schema: Path = SCHEMA) -> dict[str, Any]:
    """Validate ``config`` in place against the JSON schema, filling defaults.

    Raises ConfigError with one line naming the key and what was expected.
    """
    from jsonschema import Draft202012Validator, ValidationError

    if not schema.is_file():
        raise ConfigError(f"config schema not found at {schema}")
    try:
        validator = _filling_defaults(_strict_integers(Draft202012Validator))
        validator(yaml.safe_load(schema.read_text())).validate(config)
    except ValidationError as e:
        raise ConfigError(f"invalid config: {_describe(e)}") from None
    outside = [f for f in config["train"]["folds"] if f >= config["split"]["folds"]]
    if outside:
        raise ConfigError(
            f"invalid config: train.folds: expected folds below split.folds "
            f"({config['split']['folds']}), got {outside[0]}"
        )
    data = config["data"]
    if data["local_path"] and data["source"] != "local":
        raise ConfigError(
            f"invalid config: data.local_path is set ({data['local_path']}) but data.source is "
            f"{data['source']!r}, which does not read it: set data.source: local, or remove "
            "data.local_path"
        )
    classifier, unet = config["classifier"], config["unet"]
    if classifier["pretrained"] == "unet" and classifier["arch"] != unet["arch"]:
        raise ConfigError(
            f"invalid config: classifier.pretrained: unet starts the classifier from the "
            f"U-Net's encoder, so classifier.arch must equal unet.arch ({unet['arch']}), "
            f"got {classifier['arch']}"
        )
    return config


def layer(config: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    """``overlay`` over ``config``, in place, as Snakemake layers ``--configfile``s
    (its ``update_config``): mappings merge key by key, any other value replaces."""
    for key, value in overlay.items():
        if isinstance(value, Mapping):
            if not isinstance(config.get(key), dict):
                config[key] = {}
            layer(config[key], value)
        else:
            config[key] = value


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b] = value`` for ``key`` ``a.b``; a mapping value is layered."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    layer(node, {leaf: value})


def dotted_leaves(layer: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each non-mapping value of ``layer`` under its dotted key: {"unet.epochs": 1}."""
    leaves: dict[str, Any] = {}
    for key, value in layer.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves |= dotted_leaves(value, f"{name}.")
        else:
            leaves[name] = value
    return leaves


def read(path: str | Path) -> dict[str, Any]:
    """One YAML config file (it may hold only some keys)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        reason = " ".join(str(e).split())
        raise ConfigError(f"{path}: not a YAML config file: {reason}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(config).__name__}")
    return config


def load(
    paths: str | Path | Sequence[str | Path], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config of a run: each YAML file layered over the one before (as Snakemake
    layers ``--configfile``), then ``overrides`` (dotted keys, e.g. ``{"unet.epochs": 1}``,
    as ``--config``), validated and with defaults filled in."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    config: dict[str, Any] = {}
    for path in paths:
        layer(config, read(path))
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    try:
        return validate(config)
    except ConfigError as e:
        raise ConfigError(f"{', '.join(map(str, paths))}: {e}") from None


def parse_value(text: str) -> Any:
    """A command-line value: a number if it reads as one (1e-4 too), else YAML."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def retyped(value: Any) -> Any:
    """``value`` with every text in it read by parse_value: Snakemake's --config
    reads values inside a section, lists included, as text ('2', ['3', '1'])."""
    if isinstance(value, str):
        return parse_value(value)
    if isinstance(value, list):
        return [retyped(v) for v in value]
    if isinstance(value, Mapping):
        return {k: retyped(v) for k, v in value.items()}
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line override ``key.sub=value`` (the value as parse_value reads it)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. unet.epochs=1")
    return key.strip(), parse_value(value)


def format_override(key: str, value: Any) -> str:
    """``key=value`` that parse_override reads back as ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return f"{key}=" + text.removesuffix("...\n").strip()
