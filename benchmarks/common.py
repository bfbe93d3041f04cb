"""What every benchmark shares: the CPU's name, and writing results under benchmarks/results/."""

import json
import os
import platform
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model (with its family and model numbers: a hypervisor may show every
    EPYC as 'AMD EPYC'), core count, the vector instructions torch uses (AVX2 under
    ATEN_CPU_CAPABILITY=avx2) and whether the CPU computes bf16 natively, e.g.
    'AMD EPYC (family 26, model 2), 2 cores, AVX512, AVX512-BF16'."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name", platform.machine())
    if "cpu family" in info:
        model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    flags = info.get("flags", "").split()
    bf16 = (
        "AVX512-BF16"
        if "avx512_bf16" in flags
        else "AMX-BF16"
        if "amx_bf16" in flags
        else "no native bf16"
    )
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{model}, {os.cpu_count()} cores, {isa}, {bf16}"


def commit() -> str:
    """This checkout's short commit, 'with uncommitted changes' where a tracked file
    differs from it; empty outside git."""
    return subprocess.run(
        ["git", "describe", "--always", "--dirty= with uncommitted changes"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def write_json(name: str, results: dict) -> None:
    """Write results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")


def write_results(name: str, results: dict, markdown: str) -> None:
    """Write results/<name>.json and results/<name>.md, and print the Markdown."""
    write_json(name, results)
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
