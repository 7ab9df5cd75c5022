"""The CLI start-up benchmark runs and reports every command against the budget (no timing asserts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import startup


def test_startup_benchmark_writes_results(tmp_path: Path) -> None:
    result = startup.main(
        [
            "--repeat",
            "1",
            "--commands",
            ",train",
            "--json",
            str(tmp_path / "s.json"),
            "--markdown",
            str(tmp_path / "p.md"),
        ]
    )
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [r["command"] for r in saved["rows"]] == ["floodlora --help", "floodlora train --help"]
    assert all(r["median_s"] > 0 for r in saved["rows"]) and saved["budget_s"] == 1.5
    doc = (tmp_path / "p.md").read_text()
    assert "## CLI start-up" in doc and "`floodlora train --help`" in doc
    assert result["rows"] == saved["rows"]
