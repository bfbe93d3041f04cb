"""Where and in which precision the networks run: device and autocast dtype."""

from __future__ import annotations

import logging
import os
import re
from contextlib import nullcontext
from functools import cache
from pathlib import Path

import torch
import torch.distributed as dist

from steelflow.errors import SteelflowError

log = logging.getLogger(__name__)

NATIVE_BF16 = (8, 0)  # compute capability from which a GPU has bf16 tensor cores (Ampere)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA, then MPS, then CPU; or the device named, which must be there."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
            if unusable := unusable_gpus():
                log.warning("%s; running on the CPU", unusable)
    elif name == "cuda" and not torch.cuda.is_available():
        why = unusable_gpus() or f"torch {torch.__version__} finds no CUDA GPU here"
        raise SteelflowError(f"train.device: cuda, but {why}; expected auto or cpu here")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise SteelflowError("train.device: mps, but there is no MPS device here; expected auto")
    if name == "cuda" and dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    else:
        device = torch.device(name)
    if device.type == "cuda":
        check_kernels(device)
    return device


def unusable_gpus() -> str:
    """Why the GPUs ``nvidia-smi`` lists are of no use to this torch, which finds none:
    a torch built without CUDA, or for a newer CUDA than the driver runs; '' where it
    lists none."""
    from steelflow.gpus import nvidia_smi

    listed = len(re.findall(r"^GPU \d+:", nvidia_smi("-L"), re.MULTILINE))
    if not listed:
        return ""
    found = f"nvidia-smi lists {listed} GPU(s), which torch {torch.__version__}"
    if torch.version.cuda is None:
        return f"{found}, built without CUDA, cannot use: install a CUDA build of torch"
    driver = re.search(r"CUDA Version: ([\d.]+)", nvidia_smi())
    runs = f"CUDA {driver[1]} at most" if driver else "an older CUDA"
    return (
        f"{found}, built for CUDA {torch.version.cuda}, cannot use: their driver runs "
        f"{runs}; install a torch built for that CUDA (PyTorch's install page has one per "
        "CUDA version) or a newer NVIDIA driver"
    )


@cache
def check_kernels(device: torch.device) -> None:
    """Refuse a GPU this torch has no kernels for, which it reports as available (a P100,
    compute capability 6.0, under the cu128 torch of Kaggle's image): one line, not a
    traceback at the first layer."""
    try:
        torch.ones(1, device=device).add_(1).item()
    except RuntimeError as e:
        major, minor = torch.cuda.get_device_capability(device)
        raise SteelflowError(
            f"train.device: {torch.cuda.get_device_name(device)} (compute capability "
            f"{major}.{minor}) cannot run torch {torch.__version__}, built for "
            f"{' '.join(torch.cuda.get_arch_list()) or 'no GPU'} ({str(e).splitlines()[0]}); "
            "expected a GPU it supports (on Kaggle a T4 or L4, not the P100), or "
            "train.device: cpu (submit.py --device cpu)"
        ) from None


def usable_cores() -> int:
    """The cores this process may run on: what Slurm, a container or ``taskset`` grant
    (its CPU affinity), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity to ask
        return os.cpu_count() or 1


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 where native (a GPU of compute
    capability 8.0 or more, a CPU with AVX512-BF16 or AMX), fp16 on older GPUs (Kaggle's
    T4, where bf16 is emulated and slow), else fp32."""
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda":
            native = torch.cuda.get_device_capability(device) >= NATIVE_BF16
            return torch.bfloat16 if native else torch.float16
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        log.info("no native bf16 on %s: running in fp32", device.type)
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A fresh autocast context for ``dtype``, or a no-op for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
