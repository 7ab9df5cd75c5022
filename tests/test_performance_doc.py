"""docs/performance.md is what benchmarks/docs.py generates from the committed result JSONs: every
generated number on the page traces to benchmarks/results, and a hand edit (or a stale JSON) fails."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import REPO, load_benchmark


def test_performance_doc_matches_its_jsons(tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    doc = tmp_path / "performance.md"
    committed = (REPO / "docs" / "performance.md").read_text()
    doc.write_text(committed)
    load_benchmark("docs").main(["--results", str(results), "--markdown", str(doc)])
    regenerated = doc.read_text().replace(f"{results}/", "benchmarks/results/")
    assert regenerated == committed, "docs/performance.md differs from `python benchmarks/docs.py`"
    assert "strategies-quiet.json" not in committed
    for name in ("strategies.json", "predict.json", "predict-base.json", "startup.json"):
        assert f"`benchmarks/results/{name}`" in committed, name
