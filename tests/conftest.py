"""Shared test fixtures: where ../shared lives, and small models built in code."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLOODLORA_SHARED", REPO.parent / "shared"))
CLAY_FIXTURES = SHARED / "fixtures" / "clay"
REAL_DATA = SHARED / "data" / "real"
BENCHMARKS = REPO / "benchmarks"


def pytest_configure(config: pytest.Config) -> None:
    """`train.precision: auto` stays fp32 on every CPU in tests (and their subprocesses), so that
    numbers do not depend on whether the machine has AMX; precision tests opt in explicitly."""
    os.environ.setdefault("FLOODLORA_CPU_BF16", "0")


def load_benchmark(name: str) -> ModuleType:
    """Import `benchmarks/<name>.py` as a module (with its sibling helpers importable)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"floodlora_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
