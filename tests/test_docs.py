"""The user's documents: a README that is a manual, generated pages that match their sources."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT

PROCESS_WORDS = re.compile(r"(?i)\b(sessions?|issue [0-9]+)\b")


def test_generated_pages_are_what_their_sources_give():
    """docs/benchmarks.md (benchmarks/results/*.json) and docs/settings.md (the config
    schema) rebuild byte for byte."""
    result = subprocess.run(
        [sys.executable, "benchmarks/report.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_is_a_manual_that_speaks_of_the_project():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    documents = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    documents += (ROOT / "benchmarks/results").glob("*")
    for path in documents:
        found = PROCESS_WORDS.search(path.read_text())
        assert found is None, f"{path.relative_to(ROOT)}: {found.group(0)!r}"
