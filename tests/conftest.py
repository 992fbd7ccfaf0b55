"""Shared test helpers: locating the read-only ../shared data folder beside the repository."""

from pathlib import Path

import pytest

# tests/conftest.py -> parents[1] is the repository root; shared/ lies beside it (e.g. /work/main -> /work/shared)
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The ../shared folder; the test is skipped when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared data not available: {SHARED_DIR} does not exist")
    return SHARED_DIR
