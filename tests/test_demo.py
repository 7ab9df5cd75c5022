"""`floodlora demo --quick`: the main job end to end, through the CLI, on the embedded encoder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def test_quick_demo_writes_report_and_metrics(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "floodlora.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in (
        "## In-distribution (test split) — Table 1",
        "## Out-of-distribution (held-out events) — Table 2",
        "## Baselines",
        "## Does the encoder separate water and land?",
    ):
        assert heading in report
    assert "| Frozen encoder |" in report and "| LoRA r-4 |" in report
    assert "synthetic-ood-1" in report  # the unseen event has its own rows
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / png).is_file() and (out / png).stat().st_size > 1000, png
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"Frozen encoder", "LoRA r-4"}
    for run in metrics["runs"].values():
        assert set(run["test"]) == {"accuracy", "precision", "recall", "f1", "iou", "dice"}
        assert 0.0 <= run["test"]["f1"] <= 1.0 and run["ood"] is not None
        assert run["trainable_params"] > 0 and run["peak_memory_gb"] > 0
    assert any(name.startswith("Otsu") for name in metrics["baselines"])
    assert metrics["wall_seconds"] > 0  # its time budget is checked by benchmarks/budgets.py --demo
    assert len(metrics["verdicts"]) >= 2
    # Rerunning into the same folder replaces the demo's own runs instead of refusing.
    again = subprocess.run(
        [sys.executable, "-m", "floodlora.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir()) == ["frozen", "lora-4"]


def test_demo_bad_data_path_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "floodlora.cli", "demo", "--quick", "--out", str(tmp_path / "d"),
         "--data", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "missing" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
