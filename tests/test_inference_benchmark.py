"""benchmarks/predict.py --tiny runs end to end and reports the numbers docs/performance.md quotes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_benchmark


def test_predict_benchmark_tiny(tmp_path: Path) -> None:
    bench = load_benchmark("predict")
    md = tmp_path / "performance.md"
    md.write_text("# Performance\n\n## Strategies\n\nother section\n")
    bench.main(
        ["--tiny", "--in-process", "--size", "72", "--json", str(tmp_path / "r.json"), "--markdown", str(md)]
    )
    result = json.loads((tmp_path / "r.json").read_text())
    for name in ("unmerged", "merged"):
        v = result["variants"][name]
        assert v["km2_per_s"] > 0 and v["peak_rss_mb"] > 0 and v["pure_compute_s"] > 0
        assert v["tiles"] == 4 and v["overhead_ratio"] > 0 and v["model_in_pipeline_s"] > 0
    assert result["merged_vs_unmerged_forward"]["merged_speedup"] > 0
    text = md.read_text()
    assert "other section" in text and text.count("## Whole-scene prediction") == 1
    bench.main(
        ["--tiny", "--in-process", "--size", "72", "--json", str(tmp_path / "r.json"), "--markdown", str(md)]
    )
    assert md.read_text().count("## Whole-scene prediction") == 1  # the section is replaced, not appended
