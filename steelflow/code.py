"""The package code each stage's command runs, and its fingerprint.

A stage is ``steelflow <stage>``: cli.py's handler ``_<stage>`` and the cli
functions it calls. Its code is that part of cli.py and every steelflow module that
cli.py imports at its top or these functions import, directly or not (imports
anywhere in a module count, so the list errs on the side of rerunning); the config
schema counts when the config module does.

A stage reruns when its code's fingerprint changes (``fingerprint``): the syntax
tree of that code without docstrings, comments or help text, and the schema without
its descriptions. So an edit of what the code says reruns nothing; an edit of what it
does reruns the stages that run it. The Snakefile gives each rule its stage's
fingerprint as a param; under DVC, ``steelflow config --stages`` writes it into each
stage's file, which that stage depends on.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parent
SCHEMA = "steelflow/config.schema.yaml"


def _imported(node: ast.AST) -> set[str]:
    """The steelflow modules imported anywhere inside ``node``, by module name."""
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            found |= {a.name for a in child.names if a.name.startswith("steelflow.")}
        elif isinstance(child, ast.ImportFrom) and child.module:
            if child.module == "steelflow":
                found |= {f"steelflow.{a.name}" for a in child.names}
            elif child.module.startswith("steelflow."):
                found.add(child.module)
    names = {name.removeprefix("steelflow.") for name in found}
    return {n if (PACKAGE / f"{n}.py").is_file() else "__init__" for n in names}


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text())


def _cli_functions() -> dict[str, ast.FunctionDef]:
    return {f.name: f for f in _tree("cli").body if isinstance(f, ast.FunctionDef)}


def _handler(stage: str) -> tuple[set[str], set[str]]:
    """The modules imported by cli's ``_<stage>`` and the cli functions it calls, and
    the names of those functions."""
    functions = _cli_functions()
    if f"_{stage}" not in functions:
        raise ValueError(f"no stage {stage!r}: cli.py has no function _{stage}")
    todo, seen, modules = [f"_{stage}"], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        modules |= _imported(functions[name])
        calls = ast.walk(functions[name])
        todo += [
            c.func.id
            for c in calls
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions
        ]
    return modules, seen


def stage_code(stage: str) -> list[str]:
    """The files whose change should rerun ``stage``, relative to the repository root."""
    cli_level = [s for s in _tree("cli").body if isinstance(s, ast.Import | ast.ImportFrom)]
    todo = ["cli", *_handler(stage)[0], *(m for s in cli_level for m in _imported(s))]
    modules: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in modules:
            modules.add(module)
            todo += _imported(_tree(module)) if module != "cli" else []
    files = [f"steelflow/{m}.py" for m in sorted(modules)]
    return files + ([SCHEMA] if "config" in modules else [])


TEXT_KEYWORDS = {"help", "description", "epilog"}  # what argparse shows, not what runs


def _without_text(tree: ast.AST) -> ast.AST:
    """``tree`` without docstrings and without the text of help, description and
    epilog arguments (comments are not in a syntax tree)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg not in TEXT_KEYWORDS]
    return tree


def _cli_part(stage: str) -> ast.Module:
    """cli.py as far as ``stage`` runs it: its module-level statements, the stage's
    handler and the functions it calls, and the parser and ``main`` every stage runs."""
    reached = _handler(stage)[1] | {"build_parser", "main"}
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    tree.body = [s for s in tree.body if not isinstance(s, ast.FunctionDef) or s.name in reached]
    return tree


def _without_descriptions(value):
    if isinstance(value, dict):
        return {k: _without_descriptions(v) for k, v in value.items() if k != "description"}
    if isinstance(value, list):
        return [_without_descriptions(v) for v in value]
    return value


def _package_files() -> list[str]:
    """What the bundle's wheel holds that runs: every module, the schema and the
    project file (its dependencies)."""
    modules = sorted(f"steelflow/{p.name}" for p in PACKAGE.glob("*.py"))
    return [*modules, SCHEMA, "pyproject.toml"]


@cache
def _content(file: str) -> str:
    """What ``file`` does, as text: a module's syntax tree without docstrings or help
    text, the schema without descriptions, pyproject.toml as it is."""
    path = PACKAGE.parent / file
    if file == "pyproject.toml":
        return path.read_text()
    if file == SCHEMA:
        return json.dumps(_without_descriptions(yaml.safe_load(path.read_text())), sort_keys=True)
    return ast.dump(_without_text(ast.parse(path.read_text())))


@cache
def fingerprint(stage: str) -> str:
    """A digest of what ``stage``'s code does: its files (``stage_code``; the bundle's,
    the whole package) as syntax trees without docstrings, comments or help text, the
    schema without descriptions; of cli.py, the part the stage runs."""
    digest = hashlib.sha256()
    for file in _package_files() if stage == "bundle" else stage_code(stage):
        cli = file == "steelflow/cli.py" and stage != "bundle"
        text = ast.dump(_without_text(_cli_part(stage))) if cli else _content(file)
        digest.update(f"{file}\n{text}\n".encode())
    return digest.hexdigest()[:16]


def stage_command(stage: str) -> str:
    """The ``steelflow`` command a workflow stage runs (train_unet: train)."""
    return "train" if stage.startswith("train_") else stage
