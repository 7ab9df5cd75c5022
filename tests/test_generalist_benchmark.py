"""benchmarks/generalist.py in its tiny mode: the generalist config on real chips, JSON, the doc."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("generalist")


def test_tiny_generalist_trains_every_source_and_reports_its_wall_time(
    bench: ModuleType, real_data: Path, tmp_path: Path
) -> None:
    doc = tmp_path / "quality.md"
    doc.write_text("# Quality\n\nkept text\n")
    out = tmp_path / "generalist.json"
    result = bench.main(["--tiny", "--real", str(real_data), "--json", str(out), "--markdown", str(doc)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result)) and saved["tiny"] is True
    run = saved["run"]
    assert run["checkpoint"] == "random:test-micro" and run["epochs"] == 1
    assert run["wall_seconds"] > 0 and run["peak_rss_gb"] > 0
    assert isinstance(saved["within_budget"], bool)
    # every labelled source trains one model: 8-bit ones with their own statistics, dB ones with the preset
    assert {"ombria", "etci2021", "c2s", "sen1floods11"} <= set(run["normalization"])
    assert run["splits"]["train"] > 0 and 0.0 <= run["test"]["f1"] <= 1.0
    text = doc.read_text()
    assert "kept text" in text and "### The generalist starting point: its wall time" in text
    assert f"{run['wall_seconds'] / 60:.1f} min" in text
    again = bench.main(["--from-json", "--json", str(out), "--markdown", str(doc)])
    assert again == saved and doc.read_text() == text
