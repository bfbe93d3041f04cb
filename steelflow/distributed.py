"""Several training processes under torchrun: join the group, know the main one, relaunch."""

from __future__ import annotations

import logging
import os
import sys

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_main() -> bool:
    """Whether this is the process that validates, writes and reports (rank 0, or alone)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 when alone)."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def setup() -> None:
    """Join the process group when started by torchrun (RANK / WORLD_SIZE set)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when launched by torchrun, else itself."""
    if not dist.is_initialized():
        return model
    if is_main():
        log.info(
            "DistributedDataParallel with %d processes (%s)",
            dist.get_world_size(),
            dist.get_backend(),
        )
    return torch.nn.parallel.DistributedDataParallel(model)


def from_main(value):
    """``value`` as the main process has it, in every process (a broadcast; every process
    waits here for the main one). Alone: ``value``."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launched() -> bool:
    """Whether this process was started by torchrun."""
    return "RANK" in os.environ


def relaunch(argv: list[str], processes: int) -> None:
    """Replace this process with torchrun running ``steelflow`` ``argv`` in ``processes``.

    torchrun keeps this process's environment, CUDA_VISIBLE_DEVICES included, and its
    inheritable descriptors: the GPUs claimed (``gpus.claimed_gpus``) stay claimed."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "steelflow.cli",
        *argv,
    ]
    os.execv(sys.executable, launcher)
