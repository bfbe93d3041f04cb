"""The package files each stage's command runs: the code inputs of the workflow.

A stage is ``steelflow <stage>``: cli.py's handler ``_<stage>`` and the cli
functions it calls. Its code is cli.py and every steelflow module that cli.py
imports at its top or these functions import, directly or not (imports anywhere in a module
count, so the list errs on the side of rerunning); the config schema counts
when the config module does. The Snakefile takes its code inputs from here,
and a test holds dvc.yaml's code deps to the same lists.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

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


def _handler_imports(stage: str) -> set[str]:
    """Modules imported by cli's ``_<stage>`` and the cli functions it calls."""
    functions = {f.name: f for f in _tree("cli").body if isinstance(f, ast.FunctionDef)}
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
    return modules


def stage_code(stage: str) -> list[str]:
    """The files whose change should rerun ``stage``, relative to the repository root."""
    cli_level = [s for s in _tree("cli").body if isinstance(s, ast.Import | ast.ImportFrom)]
    todo = ["cli", *_handler_imports(stage), *(m for s in cli_level for m in _imported(s))]
    modules: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in modules:
            modules.add(module)
            todo += _imported(_tree(module)) if module != "cli" else []
    files = [f"steelflow/{m}.py" for m in sorted(modules)]
    return files + ([SCHEMA] if "config" in modules else [])
