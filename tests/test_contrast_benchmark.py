"""benchmarks/contrast.py on a subset of the real chips: per-event water/land separation, JSON, doc."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import load_benchmark


def test_contrast_on_real_chips(real_data: Path, tmp_path: Path) -> None:
    bench = load_benchmark("contrast")
    mini = load_benchmark("quality").mini_tree(real_data, tmp_path / "real", per_folder=3)
    doc = tmp_path / "quality.md"
    doc.write_text("# Quality\n\nkept text\n")
    out = tmp_path / "contrast.json"
    result = bench.main(["--real", str(mini), "--json", str(out), "--markdown", str(doc)])
    events = {e["event"]: e for e in json.loads(out.read_text())["events"]}
    assert events == {e["event"]: e for e in result["events"]}
    assert {"ombria-FRANCE", "etci2021-northal", "etci2021-nebraska", "c2s-jja"} <= set(events)
    northal = events["etci2021-northal"]
    assert northal["units"] == "scaled-uint8" and northal["label_kind"] == "water"
    assert set(northal["bands"]) == {"vv", "vh"} and northal["n_read"] == 3
    assert 0.0 < northal["water_fraction"] < 1.0
    for band in northal["bands"].values():
        assert band["upper_spread"] > 0
        assert band["separation"] == (band["water_median"] - band["land_median"]) / band["upper_spread"]
    assert set(events["ombria-FRANCE"]["bands"]) == {"vv"}  # OMBRIA is VV only
    assert events["c2s-jja"]["units"] == "db" and events["c2s-jja"]["bands"]["vh"]["land_median"] < 0
    text = doc.read_text()
    assert set(northal["threshold_ceiling"]) == {"vv", "vh", "both"}
    assert "kept text" in text and bench.SECTION_BEGIN in text and "etci2021-northal" in text
    assert "Best one threshold F1" in text
    again = tmp_path / "again.md"
    bench.main(["--from-json", "--json", str(out), "--markdown", str(again)])
    assert text.split(bench.SECTION_BEGIN)[1] == again.read_text().split(bench.SECTION_BEGIN)[1]


def test_threshold_ceiling_is_the_best_single_threshold(real_data: Path, tmp_path: Path) -> None:
    """The ceiling per band is the fitted threshold's F1 on the same chips; no other threshold of
    a coarse sweep beats it, and OMBRIA (VV only) has no VH or VV+VH ceiling."""
    from floodlora.analysis.baselines import read_samples, run_baseline
    from floodlora.data.sources import discover

    bench = load_benchmark("contrast")
    mini = load_benchmark("quality").mini_tree(real_data, tmp_path / "real", per_folder=3)
    refs = [r for r in discover(mini) if r.labelled]
    northal = [r for r in refs if r.event == "etci2021-northal"]
    ceiling = bench.threshold_ceiling(northal)
    assert set(ceiling) == {"vv", "vh", "both"}
    samples = read_samples(northal)
    for band, best in ceiling.items():
        assert 0.0 < best["f1"] <= 1.0
        for t in range(0, 256, 16):
            other = run_baseline("otsu", samples, band=band, threshold=float(t), per_chip=False)
            assert other["f1"] <= best["f1"] + 1e-9
    france = [r for r in refs if r.event == "ombria-FRANCE"]
    assert set(bench.threshold_ceiling(france)) == {"vv"}
