"""Shared fixtures: the repository root and the real Severstal material in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "severstal-real"


@pytest.fixture
def real_data() -> Path:
    """Folder of real competition files; skipped where the clone has no ../shared."""
    if not REAL.is_dir():
        pytest.skip(f"real Severstal data not found at {REAL}: it ships with the development "
                    "checkout (../shared), not with a user's clone")
    return REAL
