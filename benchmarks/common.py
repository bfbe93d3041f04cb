"""What every benchmark shares: the CPU's name, and writing results under benchmarks/results/."""

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU model, core count and whether it computes bf16 natively, e.g.
    'AMD EPYC, 2 cores, AVX512-BF16' or '..., no native bf16'."""
    model, flags = platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line
        )
        flags = info
    except (OSError, StopIteration):
        pass
    bf16 = (
        "AVX512-BF16"
        if "avx512_bf16" in flags
        else "AMX-BF16"
        if "amx_bf16" in flags
        else "no native bf16"
    )
    return f"{model}, {os.cpu_count()} cores, {bf16}"


def write_results(name: str, results: dict, markdown: str) -> None:
    """Write results/<name>.json and results/<name>.md, and print the Markdown."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
