"""Shared test fixtures: where ../shared lives, and small models built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLOODLORA_SHARED", REPO.parent / "shared"))
CLAY_FIXTURES = SHARED / "fixtures" / "clay"
REAL_DATA = SHARED / "data" / "real"


@pytest.fixture(scope="session")
def clay_fixtures() -> Path:
    if not (CLAY_FIXTURES / "clay_tiny.ckpt").is_file():
        pytest.skip(f"Clay fixtures not found under {CLAY_FIXTURES} (set FLOODLORA_SHARED)")
    return CLAY_FIXTURES


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real Sentinel-1 chips not found under {REAL_DATA} (set FLOODLORA_SHARED)")
    return REAL_DATA
