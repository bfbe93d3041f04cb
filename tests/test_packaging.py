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


def declared() -> dict[str, Requirement]:
    return {normalise(r.name): r for r in map(Requirement, PROJECT["dependencies"])}


def imported_modules() -> set[str]:
    """Top-level names of the third-party modules the package imports."""
    names = set()
    for path in (ROOT / "steelflow").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"steelflow", "__future__"}


def test_every_imported_package_is_a_declared_dependency():
    distributions = packages_distributions()
    wanted = declared()
    undeclared = {
        module: distributions.get(module)
        for module in imported_modules()
        if not {normalise(d) for d in distributions.get(module, [])} & set(wanted)
    }
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"


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
