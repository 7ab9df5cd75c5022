"""benchmarks/predict.py --tiny runs end to end (fp32 and bf16 variants, mask agreement) and writes
the section of docs/performance.md its JSON generates."""

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
    assert result["variants"]["merged-bf16"]["precision"]["precision"] == "bf16-mixed"
    assert result["variants"]["merged"]["precision"]["precision"] == "32-true"
    cmp = result["bf16_vs_fp32"]
    assert cmp["pixels"] == 72 * 72 and 0 <= cmp["differing_fraction"] <= 1
    assert cmp["mask_identical_fraction"] == 1 - cmp["differing_fraction"]
    assert 0 < cmp["median_threshold"] < 1 and 0 <= cmp["differing_at_median_fraction"] <= 1
    worst = min(cmp["mask_identical_fraction"], cmp["identical_at_median_fraction"])
    assert cmp["agreement_met"] is (worst >= 0.995)
    text = md.read_text()
    assert "other section" in text and text.count("## Whole-scene prediction") == 1
    assert "| merged-bf16 | bf16-mixed |" in text and "of the mask pixels differ" in text
    assert "nice" not in text, "the run was not niced: the page must not say it was"
    bench.main(
        ["--tiny", "--in-process", "--size", "72", "--json", str(tmp_path / "r.json"), "--markdown", str(md)]
    )
    assert md.read_text().count("## Whole-scene prediction") == 1  # the section is replaced, not appended
    bench.main(["--from-json", str(tmp_path / "r.json"), "--markdown", str(md)])  # regenerate only
    assert md.read_text().count("## Whole-scene prediction") == 1
    assert md.read_text().count("<!-- benchmarks/predict.py r: begin -->") == 1  # its own section
