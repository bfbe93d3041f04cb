"""What steelflow needs at run time: the one table of modules, minimum versions, pip names.

    python -m steelflow.requirements [--prog NAME]

exits 0 when every module imports at its minimum version or newer, else prints one
line (``NAME: error: module ...``) and exits 1. The Kaggle bundle's submit.py runs it
after installing the wheel with ``--no-deps``, so an image whose packages differ from
pyproject.toml's (``opencv-python`` for ``-headless``, a newer torch) still works, and
one that lacks a module is told so in a line. Importing is what counts: ``cv2`` from
any OpenCV distribution will do. pyproject.toml declares the same minimums (a test
keeps them in agreement). Only the standard library is imported here, so the check
itself runs wherever Python does.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass

from steelflow.errors import SteelflowError


@dataclass(frozen=True)
class Need:
    """A module steelflow imports: ``module`` at ``minimum`` or newer, from any of ``pip``
    (the first is the one pyproject.toml declares); ``label`` names it for people."""

    module: str
    minimum: str
    pip: tuple[str, ...]
    label: str = ""

    def __str__(self) -> str:
        return f"{self.module} ({self.label})" if self.label else self.module

    def wanted(self) -> str:
        where = ", or ".join(self.pip)
        return f"steelflow needs {self.module}>={self.minimum} (pip install {where})"

    def absent(self) -> str:
        return f"module {self} is missing; {self.wanted()}"


NEEDS = (
    Need("torch", "2.6", ("torch",), "PyTorch"),
    Need("torchvision", "0.21", ("torchvision",)),  # deepcopy of a feature extractor (EMA)
    Need("numpy", "2.0", ("numpy",)),  # np.bitwise_count
    Need("pandas", "2.2.2", ("pandas",)),
    Need("numba", "0.60", ("numba",)),
    Need("cv2", "4.10", ("opencv-python-headless", "opencv-python"), "OpenCV"),
    Need("tqdm", "4.66", ("tqdm",)),
    Need("matplotlib", "3.8.4", ("matplotlib",)),
    Need("yaml", "6", ("pyyaml",), "PyYAML"),
    Need("jsonschema", "4.20", ("jsonschema",)),
)


def missing(module: str) -> str | None:
    """The sentence for ``module`` not found, when steelflow needs it; else None."""
    need = next((n for n in NEEDS if n.module == module), None)
    return need.absent() if need else None


class MissingRequirement(SteelflowError):
    """A module steelflow needs is missing, cannot be imported, or is too old."""


def release(version: str) -> tuple[int, ...] | None:
    """The numeric release of ``version`` (``2.14.1+cu130`` -> (2, 14, 1), ``2.0.0rc1`` ->
    (2, 0, 0), ``4.10.0.84`` -> (4, 10, 0, 84)); None when it does not start with one."""
    found = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in found.group().split(".")) if found else None


def at_least(version: str, minimum: str) -> bool:
    """Whether ``version``'s release is ``minimum``'s or later (a pre-release counts as its
    release). A version without a numeric release cannot be judged and passes."""
    have, need = release(version), release(minimum)
    if have is None or need is None:
        return True
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def version_of(module, need: Need) -> str | None:
    """The imported module's ``__version__``, else its distribution's version, else None."""
    version = vars(module).get("__version__")  # vars: no module __getattr__ (jsonschema warns)
    if isinstance(version, str):
        return version
    for name in need.pip:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def problems(needs: tuple[Need, ...] = NEEDS) -> list[str]:
    """One sentence per module of ``needs`` that is missing, fails to import or is older
    than its minimum; empty when all is well. Imports each module."""
    found = []
    for need in needs:
        try:
            module = importlib.import_module(need.module)
        except ModuleNotFoundError as e:
            if e.name != need.module:  # the module is there, one of its own imports is not
                found.append(f"module {need} cannot be imported ({e}); {need.wanted()}")
            else:
                found.append(need.absent())
            continue
        except Exception as e:  # e.g. ImportError: libGL.so.1 for opencv-python
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            found.append(f"module {need} cannot be imported ({reason}); {need.wanted()}")
            continue
        version = version_of(module, need)
        if version is not None and not at_least(version, need.minimum):
            found.append(f"module {need} is {version}, too old; {need.wanted()}")
    return found


def check(needs: tuple[Need, ...] = NEEDS) -> None:
    """Raise MissingRequirement, one line telling every problem, unless all ``needs`` are met."""
    found = problems(needs)
    if found:
        raise MissingRequirement("; also ".join(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steelflow.requirements", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--prog", default="steelflow", help="name that starts the error line")
    args = parser.parse_args(argv)
    try:
        check()
    except MissingRequirement as e:
        print(f"{args.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
