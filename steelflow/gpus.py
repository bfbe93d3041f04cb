"""The GPUs of a machine, shared out among the training jobs that run side by side.

Snakemake counts GPUs (``--resources gpu=N``) but tells a local job no device ids
(snakemake/snakemake#281), so each job claims its own here: one lock file per GPU,
held with flock for the job's life. The kernel drops a lock when its holder exits,
killed or not, so a crashed job never leaves a GPU claimed.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from steelflow.distributed import launched
from steelflow.errors import SteelflowError

log = logging.getLogger(__name__)


class GpuError(SteelflowError):
    """A training job asks for more GPUs than there are."""


POLL_S = 2.0  # between tries while every GPU is held by other jobs


def gpu_pool() -> list[str]:
    """The ids of the GPUs jobs share out: those of CUDA_VISIBLE_DEVICES when it is set
    (as a user or Slurm set it for Snakemake), else each GPU ``nvidia-smi -L`` lists;
    none without either (with nvidia-smi's ids, CUDA is told to number the GPUs the
    same way). Asks neither torch nor CUDA, which must not start before
    CUDA_VISIBLE_DEVICES is set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [i.strip() for i in visible.split(",") if i.strip()]
    listed = nvidia_smi("-L")
    if listed:
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers them as nvidia-smi does
    return [str(i) for i, _ in enumerate(re.findall(r"^GPU \d+:", listed, re.MULTILINE))]


def nvidia_smi(*args: str) -> str:
    """What ``nvidia-smi ARGS`` prints; '' where it cannot run (no NVIDIA driver)."""
    try:
        return subprocess.run(
            ["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_lock_folder() -> Path:
    """Where the jobs of this machine keep their GPU locks: $XDG_RUNTIME_DIR (the user's
    own, on the machine itself), else /tmp; not $TMPDIR, which Snakemake may set per
    job. Inside a Slurm job the locks are that job's own: its GPUs are its own already."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path("/tmp")
    name = "steelflow-gpus" if base != Path("/tmp") else f"steelflow-gpus-{os.getuid()}"
    if "SLURM_JOB_ID" in os.environ:
        name += f"-slurm{os.environ['SLURM_JOB_ID']}"
    return base / name


def lock_gpus(pool: list[str], count: int, folder: Path) -> tuple[list[str], list[int]]:
    """``count`` GPUs of ``pool`` that no other process holds, locked in ``folder``, and
    the descriptors that hold their locks; waits while fewer are free."""
    import fcntl

    if count > len(pool):
        raise GpuError(
            f"train.nproc_per_node: {count} processes need {count} GPUs, but there are "
            f"{len(pool)} ({','.join(pool) or 'none'}; CUDA_VISIBLE_DEVICES, else nvidia-smi -L)"
        )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    waiting = False
    while True:
        held: list[tuple[str, int]] = []
        for gpu in pool:
            name = re.sub(r"[^\w.-]", "_", gpu)  # a UUID of a MIG slice has slashes
            fd = os.open(folder / f"gpu-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
            held.append((gpu, fd))
            if len(held) == count:
                return [g for g, _ in held], [fd for _, fd in held]
        unlock(fd for _, fd in held)  # too few: let them go, so that no two jobs wait on each other
        if not waiting:
            log.info(
                "waiting for %d free GPU(s) of %s: other jobs hold them (locks in %s)",
                count,
                ",".join(pool),
                folder,
            )
            waiting = True
        time.sleep(POLL_S)


def unlock(fds) -> None:
    """Release the GPU locks of ``fds`` (also where a forked loader worker shares them)."""
    import fcntl

    for fd in fds:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def claimed_gpus(config: dict) -> Iterator[list[str]]:
    """A training job's own GPUs, ``train.nproc_per_node`` of them, for the life of the
    block: CUDA_VISIBLE_DEVICES names them (logged), locks keep other jobs off them.

    Enter it before torch starts CUDA, which reads CUDA_VISIBLE_DEVICES once; the
    processes torchrun starts inherit the variable and the locks. Claims nothing for a
    ``train.device`` of cpu or mps, nor for ``auto`` without GPUs (``gpu_pool``), nor in
    the processes torchrun started (their launcher claimed), nor once CUDA has started.
    Yields the GPU ids, [] when none were claimed.
    """
    train = config["train"]
    pool = [] if launched() or train["device"] not in ("auto", "cuda") else gpu_pool()
    if not pool or torch.cuda.is_initialized():
        if pool or (train["device"] == "cuda" and not launched()):
            log.warning(
                "train.device %s: no GPUs claimed for this job (%s)",
                train["device"],
                "CUDA had started" if pool else "none in CUDA_VISIBLE_DEVICES or nvidia-smi -L",
            )
        yield []
        return
    folder = gpu_lock_folder()
    gpus, fds = lock_gpus(pool, train["nproc_per_node"], folder)
    for fd in fds:  # kept across exec, when this process becomes torchrun
        os.set_inheritable(fd, True)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    log.info(
        "CUDA_VISIBLE_DEVICES=%s: this job's GPU(s) of %s (locks in %s)",
        ",".join(gpus),
        ",".join(pool),
        folder,
    )
    try:
        yield gpus
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
        unlock(fds)
