"""What every benchmark does with its results: JSON and Markdown under benchmarks/results/."""

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, results: dict, markdown: str) -> None:
    """Write results/<name>.json and results/<name>.md, and print the Markdown."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
