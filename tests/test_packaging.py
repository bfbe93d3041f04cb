"""The package as installed: declared dependencies cover its imports, version, licence."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> dict[str, Requirement]:
    """The base dependencies and those of ``extras`` (without steelflow's own extras)."""
    listed = PROJECT["dependencies"] + [
        r for extra in extras for r in PROJECT["optional-dependencies"][extra]
    ]
    requirements = (Requirement(r) for r in listed)
    return {normalise(r.name): r for r in requirements if r.name != "steelflow"}


def imported_modules(paths=None) -> set[str]:
    """Top-level names of the third-party modules the package (or ``paths``) imports."""
    names = set()
    for path in paths or (ROOT / "steelflow").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"steelflow", "__future__"}


def undeclared(modules: set[str], wanted: dict[str, Requirement]) -> dict:
    distributions = packages_distributions()
    return {
        module: distributions.get(module)
        for module in modules
        if not {normalise(d) for d in distributions.get(module, [])} & set(wanted)
    }


def test_every_imported_package_is_a_declared_dependency():
    missing = undeclared(imported_modules(), declared("workflow"))
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


def test_prediction_needs_only_the_base_dependencies():
    """`pip install steelflow` (no extras) is enough for submit and predict: nothing on
    their import path needs snakemake, dvc or kaggle."""
    from steelflow.code import stage_code

    files = {f for stage in ("submit", "predict") for f in stage_code(stage) if f.endswith(".py")}
    missing = undeclared(imported_modules([ROOT / f for f in files]), declared())
    assert not missing, f"submit and predict import what only an extra provides: {missing}"
    assert not {"snakemake", "dvc", "kaggle"} & set(declared())


def test_declared_minimum_versions_have_the_apis_the_code_uses():
    source = "\n".join(p.read_text() for p in (ROOT / "steelflow").glob("*.py"))
    numpy = declared()["numpy"].specifier
    if "np.bitwise_count" in source:  # new in NumPy 2.0
        assert not numpy.contains("1.26.4"), f"np.bitwise_count needs numpy>=2, declared {numpy}"


def test_the_command_tells_its_version_and_the_licence_ships():
    steelflow = Path(sys.executable).parent / "steelflow"
    result = subprocess.run([steelflow, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"steelflow {PROJECT['version']}"
    assert "MIT License" in (ROOT / "LICENSE").read_text() and PROJECT["license"] == "MIT"
