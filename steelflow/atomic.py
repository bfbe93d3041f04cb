"""Atomic outputs: write to a temporary name beside the target, then rename; and the
rule that an output never replaces what the user made.

A folder a command writes holds a marker file (MARKER) naming the command. A later
run of the same command may replace that folder; any other existing path is refused
(``check_output_dir``), unless the user passes ``--force`` for a folder.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steelflow.errors import SteelflowError

log = logging.getLogger(__name__)

MARKER = ".steelflow"  # in each output folder: "steelflow COMMAND", the command that wrote it


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On an error the temporary file is removed, so a half-written output never
    appears under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):  # unlink would fail on a read-only folder, even without tmp
            tmp.unlink()


def remove_leftovers(path: Path) -> None:
    """Remove the temporary files and folders of ``path`` (``.NAME.PID.tmp`` or ``.old``)
    that a run killed on this machine left behind: those whose process is gone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.(tmp|old)")
    for item in path.parent.iterdir():
        found = pattern.fullmatch(item.name)
        if not found or _running(int(found[1])):
            continue
        log.warning("removing %s, left by a run that was killed", item)
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (perhaps another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE).

    False where the system or file system cannot.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def written_by(path: Path) -> str | None:
    """The command whose output folder ``path`` is (its marker), or None."""
    try:
        return (path / MARKER).read_text().strip().removeprefix("steelflow ")
    except (OSError, UnicodeDecodeError):
        return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    path: str | Path, command: str, force: bool = False, inputs: tuple[Path, ...] = ()
) -> None:
    """Refuse, before any work, an output folder ``path`` that ``command`` would destroy.

    It may not exist, or be a folder an earlier run of ``command`` wrote, or, with
    ``force``, any other folder: then a warning says it will be replaced. Never a
    file, the working folder or a folder above it, nor one holding one of ``inputs``.
    """
    path = Path(path).expanduser().resolve()
    check_writable(path, "--out")
    for item in (Path.cwd(), *inputs):
        if _inside(Path(item).expanduser().resolve(), path):
            what = "the working folder" if item == Path.cwd() else item
            raise SteelflowError(
                f"--out {path}: would replace {what}; choose a new folder for the output"
            )
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise SteelflowError(f"--out {path}: exists and is not a folder; choose a new folder")
    owner = written_by(path)
    if owner == command:
        return
    if force:
        log.warning("replacing %s and everything in it (--force)", path)
        return
    made = f"the output of steelflow {owner}" if owner else "not a folder steelflow wrote"
    raise SteelflowError(
        f"--out {path}: exists and is {made}; steelflow {command} replaces only its own "
        "output folders: choose a new folder, or pass --force to replace it"
    )


def check_writable(path: Path, flag: str) -> None:
    """Refuse, before any work, an output ``path`` whose folder (or the nearest one above
    it that exists, where it would be made) cannot be written, as on a read-only mount."""
    folder = Path(path).expanduser().absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise SteelflowError(
            f"{flag} {path}: cannot write in {folder} (read-only or not permitted); "
            "choose a writable place for the output"
        )


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output file ``path`` where a folder is, or where it
    cannot be written (``check_writable``)."""
    path = Path(path)
    if path.is_dir():
        raise SteelflowError(f"{path}: is a folder; expected the path of a file to write")
    check_writable(path, flag)


@contextmanager
def atomic_dir(path: str | Path, command: str) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``,
    marked as ``command``'s output (MARKER).

    The new folder is swapped in for the old one in one step, so a reader sees
    either the complete old folder or the complete new one (where the system
    cannot swap, the old folder is renamed aside just before). On an error the
    temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text(f"steelflow {command}\n")
        if not (path.exists() and _exchange(tmp, path)):  # else tmp now holds the old folder
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
