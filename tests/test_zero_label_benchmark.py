"""benchmarks/zero_label.py end to end on the real dB chips, with a one-epoch self-adaptation."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_benchmark


def test_zero_label_benchmark_tiny(real_data: Path, tmp_path: Path) -> None:
    bench = load_benchmark("zero_label")
    out = tmp_path / "z.json"
    args = ["--real", str(real_data), "--groups", "c2s-s1f11", "--rows", "self,split,otsu-event", "--tiny",
            "--json", str(out), "--workdir", str(tmp_path / "work"), "--no-doc"]  # fmt: skip
    bench.main(args)
    saved = json.loads(out.read_text())
    rows = saved["groups"]["c2s-s1f11"]["rows"]
    assert saved["tiny"] is True and saved["groups"]["c2s-s1f11"]["role"] == "reporting"
    assert {"self", "split", "otsu-event"} <= set(rows)
    for row in ("self", "split", "otsu-event"):
        assert 0.0 <= rows[row]["f1"] <= 1.0 and 0.0 <= rows[row]["iou"] <= rows[row]["f1"]
    assert rows["self"]["epochs"] == 1 and rows["self"]["wall_seconds"] > 0
    # the teacher alone is the split baseline the CLI scores (floodlora baseline split)
    from floodlora.analysis.baselines import baseline_for_data

    roots = [real_data / "c2s_ms_floods", real_data / "sen1floods11"]
    direct = baseline_for_data("split", roots, split="all")
    assert rows["split"]["f1"] == direct["f1"]
    dry = saved["dry_scene"]
    assert dry["split"] == 0.0 and dry["self"] == 0.0 and dry["otsu-chip"] > 0.2  # Otsu splits the fields
    targets = saved["summary"]["targets"]
    assert targets["self_at_least_teacher"] == (rows["self"]["f1"] >= rows["split"]["f1"])

    doc = tmp_path / "quality.md"
    doc.write_text("# Quality\n\nkept\n")
    bench.DOC = doc
    bench.main(["--from-json", "--json", str(out)])
    text = doc.read_text()
    assert "kept" in text and "| Teacher: split-based thresholding |" in text
    assert f"{100 * rows['split']['f1']:.1f}" in text
