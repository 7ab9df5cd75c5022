"""benchmarks/quality.py in its tiny mode: real chips (a symlinked subset), JSON, the generated doc."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("quality")


def test_mini_tree_keeps_whole_chips(bench: ModuleType, real_data: Path, tmp_path: Path) -> None:
    from floodlora.data.sources import discover, read_sample

    mini = bench.mini_tree(real_data, tmp_path / "real", per_folder=3)
    refs = [r for r in discover([mini]) if r.labelled]
    by_format: dict[str, int] = {}
    for r in refs:
        by_format[r.format] = by_format.get(r.format, 0) + 1
        read_sample(r)  # every chip is complete: all its files were linked
    assert by_format["ombria"] == 3 + 3 + 3  # OmbriaS1 train, test and FRANCE
    assert by_format["etci2021"] == 3 + 3
    assert by_format["c2s"] == 3 and by_format["sen1floods11"] == 1


def test_tiny_benchmark_end_to_end(bench: ModuleType, real_data: Path, tmp_path: Path) -> None:
    doc = tmp_path / "quality.md"
    doc.write_text("# Quality\n\nkept text\n")
    out = tmp_path / "quality.json"
    result = bench.main([
        "--tiny", "--groups", "etci-nebraska", "--rows", "recipe,frozen", "--real", str(real_data),
        "--json", str(out), "--markdown", str(doc),
    ])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["tiny"] is True and saved["groups"][0]["name"] == "etci-nebraska"
    rows = {r["row"]: r for r in saved["rows"]}
    assert {"recipe", "frozen", "otsu-chip", "otsu-event", "fitted"} <= set(rows)
    assert "change-chip" not in rows  # ETCI has no pre-event view
    for name in ("recipe", "frozen"):
        r = rows[name]
        assert "error" not in r, r
        assert 0.0 <= r["at_run_threshold"]["f1"] <= 1.0 and 0.0 < r["threshold"] < 1.0
        assert r["at_run_threshold"]["n_chips"] == 8  # the subset's Nebraska chips, all scored
        assert r["peak_rss_gb"] > 0.1 and r["wall_seconds"] > 0
    assert rows["recipe"]["trainable_params"] > rows["frozen"]["trainable_params"]
    text = doc.read_text()
    assert "kept text" in text and bench.SECTION_BEGIN in text and bench.SECTION_END in text
    assert "ETCI Nebraska F1 / IoU" in text and "Recommended recipe" in text
    # the doc is a function of the JSON alone
    again = tmp_path / "again.md"
    bench.main(["--from-json", "--json", str(out), "--markdown", str(again)])
    section = text.split(bench.SECTION_BEGIN)[1]
    assert section == again.read_text().split(bench.SECTION_BEGIN)[1]
    assert result is not None and result["summary"]["means"]["recipe"]["f1"] == pytest.approx(
        rows["recipe"]["at_run_threshold"]["f1"]
    )
