"""The rules' conda environment: pyproject.toml's dependencies, and the checkout's steelflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import ROOT, TEST_CONFIG

ENV_FILE = ROOT / "workflow/envs/steelflow.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What runs around the jobs, and steelflow itself (the checkout's): never in the environment.
AROUND_THE_JOBS = {"snakemake", "dvc", "steelflow"}


def requirement_set(lines: list[str]) -> set[tuple]:
    """Each requirement as what pip reads of it: name, extras, versions, marker."""
    found = set()
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise AssertionError(f"{line!r}: not a requirement (a path, URL or option)") from None
        found.add(
            (canonicalize_name(req.name), frozenset(req.extras), req.specifier, str(req.marker))
        )
    return found


def environment() -> tuple[list[str], list[str]]:
    """The conda packages and the pip requirements of the rules' environment."""
    deps = yaml.safe_load(ENV_FILE.read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = [line for d in deps if isinstance(d, dict) for line in d["pip"]]
    return conda, pip


def test_the_environment_holds_pyprojects_dependencies_as_pyproject_pins_them():
    """[project] dependencies, the opencv and kaggle extras (cv2; fetch's kaggle client), the build
    requirement (`bundle` builds its wheel without build isolation), specifiers and all;
    not steelflow itself, nor what runs around the jobs."""
    conda, pip = environment()
    expected = (
        PYPROJECT["project"]["dependencies"]
        + PYPROJECT["project"]["optional-dependencies"]["opencv"]
        + PYPROJECT["project"]["optional-dependencies"]["kaggle"]
        + PYPROJECT["build-system"]["requires"]
    )
    assert requirement_set(pip) == requirement_set(expected)
    assert len(pip) == len(expected)
    assert not {name for name, *_ in requirement_set(pip)} & AROUND_THE_JOBS
    python = [d.split("=", 1)[1] for d in conda if d.split("=")[0] == "python"]
    assert python and SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python[0])
    assert "pip" in conda


def bare_python(folder: Path) -> Path:
    """A venv whose python has no steelflow: it reaches the test environment's packages
    through PYTHONPATH alone, where .pth files (the editable install's finder) are not
    read."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", folder], check=True)
    return folder / "bin"


def test_under_conda_steelflow_is_the_checkout_the_snakefile_is_in(tmp_path):
    """Snakemake parses a copy of the workflow with --sdm conda, its --conda-prefix and
    --directory elsewhere, and runs a command through its shell with the rules' prefix:
    `steelflow` is a function that runs the copy's package, with a python that cannot
    import steelflow by itself and no steelflow on PATH."""
    project, work = tmp_path / "project", tmp_path / "work"
    project.mkdir()
    work.mkdir()
    for name in ("Snakefile", "workflow", "steelflow", "pyproject.toml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    shutil.copy(TEST_CONFIG, work / "config.yaml")  # --directory: configfile is read here
    (project / "probe.smk").write_text(
        'include: "Snakefile"\n\n\n'
        "shell(\"(echo $-; type -t steelflow; python -c 'import steelflow; "
        "print(steelflow.__file__)'; steelflow config --help) > probe.txt\")\n"
    )
    bin_ = bare_python(tmp_path / "venv")
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_), "/usr/bin", "/bin"]),
        "PYTHONPATH": sysconfig.get_paths()["purelib"],
    }

    def bash(command):
        return subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True
        )

    alone = bash("python -c 'import numpy, yaml, jsonschema; import steelflow'")
    assert "No module named 'steelflow'" in alone.stderr, alone.stderr
    assert bash("type steelflow").returncode != 0

    result = subprocess.run(
        [Path(sys.executable).parent / "snakemake", "--snakefile", project / "probe.smk"]
        + ["--directory", work, "--sdm", "conda", "--conda-prefix", tmp_path / "envs"]
        + ["--list-rules"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    flags, kind, module, *help_ = (work / "probe.txt").read_text().splitlines()
    assert {"e", "u"} <= set(flags)  # the strict mode Snakemake runs bash in
    assert kind == "function"
    assert Path(module) == project.resolve() / "steelflow" / "__init__.py"
    assert help_[0].startswith("usage: steelflow config")
