"""Tune's post-processing choices (thresholds.json), read back only when they are sound.

The file is checked against SCHEMA before any of it is used: a hand edit such as
``"enabled": "false"`` (a string, which would switch the class on), a negative
threshold, NaN (json reads it as a number), a key given twice or one it does not
know (a misspelt ``"enable"`` would be ignored) is one line naming the key and
what was expected, not a wrong submission. The keys tune writes for the reader
(Dice figures, support, folds) may hold anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steelflow.errors import SteelflowError
from steelflow.io import CLASSES

REPORT: dict = {}  # the schema of a key tune writes for the reader: any value

CLASS = {
    "type": "object",
    "required": ["enabled", "gate", "threshold", "min_area", "min_component_area"],
    "properties": {
        "enabled": {"type": "boolean"},
        "gate": {"type": "number", "minimum": 0, "maximum": 1},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "min_area": {"type": "integer", "minimum": 0},
        "min_component_area": {"type": "integer", "minimum": 0},
        **dict.fromkeys(["min_area_bound", "val_dice", "val_dice_empty", "support"], REPORT),
    },
    "additionalProperties": False,
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["non_overlap", "classes"],
    "properties": {
        "non_overlap": {"type": "boolean"},
        "classes": {
            "type": "object",
            "required": [str(c) for c in CLASSES],
            "properties": {str(c): CLASS for c in CLASSES},
            "additionalProperties": False,
        },
        **dict.fromkeys(["folds", "val_images", "val_dice", "val_dice_empty"], REPORT),
    },
    "additionalProperties": False,
}

EXPECTED = {  # each schema type as the error line says it
    "object": "an object",
    "boolean": "true or false",
    "number": "a finite number",
    "integer": "a whole number",
}


def _number(checker, value) -> bool:
    """A finite JSON number: not a bool, NaN or Infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _integer(checker, value) -> bool:
    """A JSON integer as written: 1, not 1.0 or true."""
    return isinstance(value, int) and not isinstance(value, bool)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (json.loads keeps the last)."""
    keys = [k for k, _ in pairs]
    twice = [k for k in keys if keys.count(k) > 1]
    if twice:
        raise ValueError(f"key {twice[0]!r} given twice in one object")
    return dict(pairs)


def _describe(error) -> str:
    """One line naming the key at fault and what was expected."""
    path = [str(p) for p in error.absolute_path]
    key = ".".join(path) or "<top level>"
    rule, expected, value = error.validator, error.validator_value, error.instance
    if rule == "required":
        missing = next(k for k in expected if k not in value)
        where = key if path else "the top level"
        return f"{'.'.join([*path, missing])}: missing; {where} needs {', '.join(expected)}"
    if rule == "additionalProperties":
        allowed = list(error.schema["properties"])
        unknown = next(k for k in value if k not in allowed)
        where = f"in {key}" if path else "at the top level"
        return f"unknown key {unknown!r} {where}; expected one of: {', '.join(allowed)}"
    got = json.dumps(value)
    got = got if len(got) <= 60 else f"{got[:57]}..."
    if rule == "type":
        return f"{key}: expected {EXPECTED[expected]}, got {got}"
    if rule in ("minimum", "maximum"):
        op = ">=" if rule == "minimum" else "<="
        return f"{key}: expected a value {op} {expected}, got {got}"
    return f"{key}: {error.message}"


@dataclass
class Thresholds:
    """The non-overlap rule, and per class (index 0 = class 1) the post-processing and
    the classifier gate: below it, the class is called absent."""

    non_overlap: bool
    enabled: list[bool]
    gate: list[float]
    pixel: list[float]
    min_area: list[int]
    min_component: list[int]

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        """Read and check ``steelflow tune``'s JSON; SteelflowError naming the file and
        the key if it is not that."""
        path = Path(path)
        if not path.is_file():
            raise SteelflowError(f"{path}: thresholds not found (made by steelflow tune)")
        data = validate(read(path), path)
        classes = [data["classes"][str(c)] for c in CLASSES]
        return cls(
            data["non_overlap"],
            [c["enabled"] for c in classes],
            [float(c["gate"]) for c in classes],
            [float(c["threshold"]) for c in classes],
            [c["min_area"] for c in classes],
            [c["min_component_area"] for c in classes],
        )

    def gated(self, class_prob: np.ndarray) -> np.ndarray:
        """(N, C): whether each class of each image is on and past its classifier gate."""
        return (class_prob >= np.array(self.gate)) & np.array(self.enabled)


def read(path: Path) -> Any:
    """The JSON in ``path``; SteelflowError naming it if it cannot be read as JSON."""
    try:
        return json.loads(path.read_text(), object_pairs_hook=_unique)
    except OSError as e:
        raise SteelflowError(f"{path}: cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise SteelflowError(
            f"{path}: not thresholds from steelflow tune: a binary file, expected JSON"
        ) from None
    except json.JSONDecodeError as e:
        raise SteelflowError(
            f"{path}: not thresholds from steelflow tune: not JSON ({e})"
        ) from None
    except ValueError as e:  # from _unique
        raise SteelflowError(f"{path}: invalid thresholds: {e}") from None


def validate(data: Any, path: Path) -> dict[str, Any]:
    """``data`` if it matches SCHEMA; else SteelflowError naming ``path`` and the key."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    types = Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _number, "integer": _integer}
    )
    try:
        validators.extend(Draft202012Validator, type_checker=types)(SCHEMA).validate(data)
    except ValidationError as e:
        raise SteelflowError(f"{path}: invalid thresholds: {_describe(e)}") from None
    return data
