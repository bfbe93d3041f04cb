"""Checkpoints of the training engine: written atomically, read back with clear errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from steelflow.atomic import atomic_path
from steelflow.errors import SteelflowError

KEYS = {"model", "config", "epoch", "metrics", "task"}


class CheckpointError(SteelflowError):
    """A checkpoint that is missing, unreadable or of the wrong kind; the message names it."""


def save(path: Path, state: dict) -> None:
    """torch.save to a temporary name, then rename: a killed run never leaves half a file.
    Written through a file object, the archive's records are named alike whatever the
    path, so the same state gives the same bytes (and DVC the same hash)."""
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        torch.save(state, file)


def last_path(out: Path) -> Path:
    """Where the resumable state of a training that writes ``out`` lives: NAME.last.pt."""
    return out.with_name(f"{out.stem}.last{out.suffix}")


def best_path(out: Path) -> Path:
    """Where a training that writes ``out`` keeps its best model until it finishes:
    NAME.best.pt, so that ``out`` appears only once every epoch has run."""
    return out.with_name(f"{out.stem}.best{out.suffix}")


def load(path: Path, task: str | None = None, device: str | torch.device = "cpu") -> dict:
    """A checkpoint of the engine, loaded with ``weights_only=True``.

    ``task`` ("classifier" or "unet") is the network expected. Anything else
    (no file, a truncated or foreign file, another network's checkpoint)
    raises CheckpointError naming the file and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable steelflow checkpoint (truncated, or another kind of file): "
            f"{reason}"
        ) from None
    missing = KEYS - set(state) if isinstance(state, dict) else KEYS
    if missing:
        raise CheckpointError(
            f"{path}: not a steelflow checkpoint: missing {', '.join(sorted(missing))}"
        )
    if task and state["task"] != task:
        raise CheckpointError(f"{path}: a {state['task']} checkpoint, expected a {task} one")
    return state
