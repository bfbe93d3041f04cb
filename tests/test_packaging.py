"""The package as installed: declared dependencies cover its imports and agree with the
runtime check's table (steelflow.requirements), no cap above; version, licence."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from steelflow.requirements import NEEDS, MissingRequirement, Need, at_least, check, problems
from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str) -> dict[str, Requirement]:
    """The base dependencies and those of ``extras``, following ``steelflow[extra]``."""
    found, wanted, seen = {}, list(extras), set()
    for requirement in map(Requirement, PROJECT["dependencies"]):
        found[normalise(requirement.name)] = requirement
    while wanted:
        extra = wanted.pop()
        seen.add(extra)
        for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if requirement.name == "steelflow":
                wanted += sorted(requirement.extras - seen)
            else:
                found[normalise(requirement.name)] = requirement
    return found


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


def test_prediction_needs_only_the_base_dependencies_and_opencv():
    """`pip install steelflow[opencv]` (or steelflow and either OpenCV) is enough for submit
    and predict: nothing on their import path needs snakemake, dvc or kaggle, and the
    runtime check (steelflow.requirements, run by the bundle's submit.py) covers every
    module they import."""
    from steelflow.code import stage_code

    files = {f for stage in ("submit", "predict") for f in stage_code(stage) if f.endswith(".py")}
    imported = imported_modules([ROOT / f for f in files])
    missing = undeclared(imported, declared("opencv"))
    assert not missing, f"submit and predict import what only an extra provides: {missing}"
    assert not {"snakemake", "dvc", "kaggle"} & set(declared("opencv"))
    unchecked = imported - {need.module for need in NEEDS}
    assert not unchecked, f"imported by submit or predict, not in requirements.NEEDS: {unchecked}"


def test_the_runtime_table_and_pyproject_declare_the_same_minimums():
    """steelflow.requirements.NEEDS and pyproject.toml's base dependencies plus the opencv
    extra: the same packages (the table's first pip name), the same minimum versions."""
    wanted = declared("opencv")
    assert {normalise(need.pip[0]) for need in NEEDS} == set(wanted)
    for need in NEEDS:
        minimums = [
            s.version for s in wanted[normalise(need.pip[0])].specifier if s.operator == ">="
        ]
        assert [Version(v) for v in minimums] == [Version(need.minimum)], (
            f"{need.module}: requirements.py says >={need.minimum}, pyproject.toml "
            f"{wanted[normalise(need.pip[0])]}"
        )
    assert "opencv-python-headless" not in {normalise(r) for r in PROJECT["dependencies"]}


def test_the_oldest_set_pins_every_declared_minimum():
    """constraints-oldest.txt (the set scripts/oldest.sh tests) holds each of steelflow's
    own dependencies at the minimum pyproject.toml declares."""
    lines = (ROOT / "constraints-oldest.txt").read_text().splitlines()
    pins = {normalise(r.name): r for r in (Requirement(ln) for ln in lines if ln[:1].isalpha())}
    wanted = declared("opencv")
    assert set(pins) == set(wanted)
    for name, pin in pins.items():
        (pinned,) = [Version(s.version) for s in pin.specifier if s.operator == "=="]
        (minimum,) = [Version(s.version) for s in wanted[name].specifier if s.operator == ">="]
        assert pinned.release[: len(minimum.release)] == minimum.release, f"{pin}: {minimum}"


def test_no_dependency_is_capped_above():
    """A cap stops the Kaggle bundle installing next to a newer release; this repository's
    own cap on torch lives in constraints.txt, which the Makefile passes to pip."""
    for extra in [None, *PROJECT["optional-dependencies"]]:
        for requirement in declared(*([extra] if extra else [])).values():
            capped = [s for s in requirement.specifier if s.operator in ("<", "<=", "==", "~=")]
            assert not capped, f"pyproject.toml caps {requirement} ({extra or 'base'})"
    constraints = (ROOT / "constraints.txt").read_text()
    assert "torch<=" in constraints and "torchvision<=" in constraints
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_the_runtime_check_needs_only_the_standard_library():
    """The bundle's submit.py runs it in an image that may lack any of steelflow's needs."""
    source = ROOT / "steelflow/requirements.py"
    assert imported_modules([source]) == set()
    internal = {
        node.module
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("steelflow")
    }
    assert internal <= {"steelflow.errors"}


@pytest.mark.parametrize(
    ("version", "minimum", "enough"),
    [
        ("2.14.1+cu130", "2.4", True),
        ("2.3.1+cpu", "2.4", False),
        ("4.10.0.84", "4.8", True),
        ("4.7.0.72", "4.8", False),
        ("2.0.0rc1", "2.0", True),
        ("1.26.4", "2.0", False),
        ("0.100.0", "0.59", True),
        ("6.0.2", "6", True),
        ("1.0", "4.66", False),
    ],
)
def test_the_runtime_check_compares_release_numbers(version, minimum, enough):
    assert at_least(version, minimum) is enough


def test_the_runtime_check_tells_a_missing_or_old_module_in_one_line():
    from steelflow.errors import SteelflowError

    needs = (
        Need("no_such_module_here", "1.0", ("no-such", "other"), "Nothing"),
        Need("pytest", "999", ("pytest",)),
        Need("pytest", "8", ("pytest",)),
    )
    found = problems(needs)
    assert found == [
        "module no_such_module_here (Nothing) is missing; steelflow needs "
        "no_such_module_here>=1.0 (pip install no-such, or other)",
        f"module pytest is {pytest.__version__}, too old; steelflow needs pytest>=999 "
        "(pip install pytest)",
    ]
    with pytest.raises(MissingRequirement) as raised:
        check(needs)
    assert isinstance(raised.value, SteelflowError) and "\n" not in str(raised.value)
    assert check(needs[2:]) is None


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
