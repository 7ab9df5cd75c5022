"""benchmarks/adapt.py in its tiny mode: real chips (a symlinked subset), JSON, PNG, the generated doc."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("adapt")


def test_subset_tree_holds_only_the_chosen_chips(bench: ModuleType, real_data: Path, tmp_path: Path) -> None:
    from floodlora.data.sources import discover, read_sample

    group = next(g for g in bench.GROUPS if g.name == "etci-northal")
    refs = bench.group_refs(real_data, group)[:5]
    tree = bench.subset_tree(real_data, refs[1:4], tmp_path / "sub")
    found = [r for r in discover([tree]) if r.labelled]
    assert sorted(r.chip_id for r in found) == sorted(r.chip_id for r in refs[1:4])
    for r in found:
        read_sample(r)  # every file the reader pairs was linked


def test_random_choice_is_nested_and_seeded(bench: ModuleType) -> None:
    items = list(range(30))
    a, b = bench.random_choice(items, 10, seed=3), bench.random_choice(items, 20, seed=3)
    assert b[:10] == a and len(set(b)) == 20
    assert bench.random_choice(items, 10, seed=4) != a


def test_tiny_benchmark_end_to_end(bench: ModuleType, real_data: Path, tmp_path: Path) -> None:
    doc = tmp_path / "quality.md"
    doc.write_text("# Quality\n\nkept text\n")
    out = tmp_path / "adapt.json"
    result = bench.main(
        ["--tiny", "--groups", "ombria-france", "--real", str(real_data), "--json", str(out),
         "--markdown", str(doc), "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["tiny"] is True and saved["ks"] == list(bench.TINY_KS)
    assert saved["uncertain_k"] == bench.TINY_KS[0]
    (g,) = saved["groups"]
    assert g["name"] == "ombria-france" and g["n_chips"] == 8 and g["complete"] is True
    chosen = {c for r in g["rows"] for c in r["chips"]}
    pool = set(g["uncertainty_pool"])  # reserved before any model: the scored chips exclude all of it
    assert len(pool) == len(g["uncertainty_pool"]) >= bench.TINY_KS[0]
    assert g["n_eval"] == g["n_usable"] - len(chosen | pool) and g["n_eval"] > 0
    assert 0.0 <= g["zero_shot"]["f1"] <= 1.0 and g["zero_shot"]["n_chips"] == g["n_eval"]
    rows = {(r["k"], r["selection"], r["method"]): r for r in g["rows"]}
    from_start = ("calibrate-start", "calibrate-best", "adapt-start", "adapt-start-held", "adapt-start-all")
    methods = ("fitted", *from_start, "adapt-encoder", "adapt-encoder-held", "adapt-encoder-all")
    expected = {(k, "random", m) for k in bench.TINY_KS for m in methods}
    expected |= {(bench.TINY_KS[0], "uncertain", m) for m in ("fitted", *from_start)}
    assert set(rows) == expected
    for key, r in rows.items():
        assert "error" not in r, (key, r)
        assert len(r["chips"]) == key[0]
        assert 0.0 <= r["score"]["f1"] <= 1.0 and 0.0 <= r["score"]["iou"] <= r["score"]["f1"] + 1e-9
        assert r["score"]["n_chips"] == g["n_eval"]  # every method scores the same chips
        if key[2] != "fitted":
            assert r["wall_seconds"] > 0 and r["epochs"] == (0 if key[2].startswith("calibrate") else 1)
    # nested random draws, and the uncertainty-chosen chips are not the random ones
    k1, k2 = bench.TINY_KS
    assert set(rows[(k1, "random", "fitted")]["chips"]) <= set(rows[(k2, "random", "fitted")]["chips"])
    assert not set(rows[(k1, "uncertain", "fitted")]["chips"]) & set(rows[(k1, "random", "fitted")]["chips"])
    assert set(rows[(k1, "uncertain", "fitted")]["chips"]) <= pool
    assert not pool & set(rows[(k2, "random", "fitted")]["chips"])
    summary = saved["summary"]
    assert summary["max_adapt_seconds"] == pytest.approx(
        max(r["wall_seconds"] for r in g["rows"] if r["method"] != "fitted")
    )
    assert {"adapt-start_met", "adapt-start-held_met", "calibrate-best_met", "adapt-encoder-held_met"} <= set(
        summary["groups"]["ombria-france"]
    )
    # fine-tuning then calibrating, and fine-tuning alone: same chips, same draws; only the former
    # moved its operating point after training
    k1 = bench.TINY_KS[0]
    assert rows[(k1, "random", "adapt-start")]["chips"] == rows[(k1, "random", "adapt-start-held")]["chips"]
    assert (tmp_path / "adapt.png").stat().st_size > 1000
    text = doc.read_text()
    assert "kept text" in text and bench.SECTION_BEGIN in text and bench.SECTION_END in text
    assert "OMBRIA FRANCE 2021 held out" in text and "Not run: OMBRIA test" in text
    assert saved["command"] in text
    unc = next(line for line in text.splitlines() if line.startswith("Uncertainty-chosen against random"))
    for name, method in (("calibrated", "calibrate-start"), ("fine-tuned", "adapt-start-all")):
        u, r = rows[(k1, "uncertain", method)], rows[(k1, "random", method)]
        assert f"{name} F1 {100 * u['score']['f1']:.1f} against {100 * r['score']['f1']:.1f}" in unc
    # the doc is a function of the JSON alone
    again = tmp_path / "again.md"
    bench.main(["--from-json", "--json", str(out), "--markdown", str(again)])
    assert text.split(bench.SECTION_BEGIN)[1] == again.read_text().split(bench.SECTION_BEGIN)[1]
    assert result["summary"] == summary

    # --add-methods: rows a result lacks, on the chips and starting run the first run kept (and the
    # bare encoder, on the random chips only)
    removed = ("calibrate-start", "adapt-encoder-held")
    calibrated = {key: r for key, r in rows.items() if key[2] == "calibrate-start"}
    g["rows"] = [r for r in g["rows"] if r["method"] not in removed]
    out.write_text(json.dumps(saved))
    args = ["--add-methods", ",".join(removed), "--json", str(out), "--markdown", str(again)]
    bench.main([*args, "--workdir", str(tmp_path / "work")])
    added = json.loads(out.read_text())
    again_rows = {(r["k"], r["selection"], r["method"]): r for r in added["groups"][0]["rows"]}
    assert set(again_rows) == expected
    for key, r in calibrated.items():
        assert again_rows[key]["score"]["f1"] == pytest.approx(r["score"]["f1"])
    assert added["added"][0]["methods"] == list(removed)
    assert "Rows of `calibrate-start`, `adapt-encoder-held` added on the same chips" in again.read_text()
    with pytest.raises(SystemExit, match="cannot add"):
        bench.main(["--add-methods", "fitted", "--json", str(out), "--workdir", str(tmp_path)])
    # --as-check: the same JSON as one table at the summary's k, in its own section of the doc
    check = tmp_path / "check.md"
    bench.main(["--from-json", "--as-check", "--json", str(out), "--markdown", str(check)])
    text = check.read_text()
    assert bench.CHECK_BEGIN in text and bench.CHECK_END in text and bench.SECTION_BEGIN not in text
    k = added["summary"]["k"]
    (row,) = [line for line in text.splitlines() if line.startswith("| OMBRIA FRANCE 2021 (")]
    last = bench.TARGET_METHODS[-1]  # the table's last column
    enc = next(r for r in added["groups"][0]["rows"] if r["method"] == last and r["k"] == k)
    cells = row.strip("|").split("|")
    assert len(cells) == 2 + 1 + len(bench.TARGET_METHODS)  # group, zero-shot, fitted, each method
    assert cells[-1].strip() == f"{100 * enc['score']['f1']:.1f}"
    # --redo-methods: measured again in place; another budget must redo every method that trains
    work = ["--json", str(out), "--markdown", str(again), "--workdir", str(tmp_path / "work")]
    with pytest.raises(SystemExit, match="must redo every fine-tuning method; add adapt-encoder"):
        bench.main(["--redo-methods", "adapt-start,adapt-start-held", "--adapt-set", "max_epochs=2", *work])
    assert json.loads(out.read_text()) == added  # refused before anything changed
    training = ",".join(bench.TRAINING_METHODS)
    with pytest.raises(SystemExit, match="pass one of them per command"):
        bench.main(["--redo-methods", training, "--add-methods", "calibrate-best", *work])
    bench.main(["--redo-methods", training, "--adapt-set", "max_epochs=2", *work])
    redone = json.loads(out.read_text())
    assert redone["adapt_budget"]["max_epochs"] == 2 and redone["adapt_options"]["max_epochs"] == 2
    assert "max_epochs=2" in redone["adapt_text"] and redone["added"][-1]["redone"] is True
    # the --add-methods entry above stays: its calibrate-start rows were not redone
    assert [a["methods"] for a in redone["added"]] == [list(removed), list(bench.TRAINING_METHODS)]
    bench.main(["--redo-methods", training, "--adapt-set", "max_epochs=2", *work])  # the same again
    entries = json.loads(out.read_text())["added"]
    assert len(entries) == 2 and entries[0]["methods"] == list(removed)  # the first redo is superseded
    redone_rows = {(r["k"], r["selection"], r["method"]): r for r in redone["groups"][0]["rows"]}
    assert set(redone_rows) == expected  # each row once: the old ones were replaced
    assert all(redone_rows[key]["epochs"] <= 2 for key in redone_rows if key[2] in bench.TRAINING_METHODS)
    assert "measured again on the same chips" in again.read_text()
    # --rebuild: the first run's workdir gone (a new machine), the seeded starting run is trained and
    # the chips cut again into another one; its zero-shot and fitted rows must match the JSON's
    latest = json.loads(out.read_text())
    latest["groups"][0]["rows"] = [r for r in latest["groups"][0]["rows"] if r["method"] != "calibrate-best"]
    out.write_text(json.dumps(latest))
    new_work = tmp_path / "new-machine"
    bench.main(["--add-methods", "calibrate-best", "--rebuild", "--real", str(real_data), "--json", str(out),
                "--markdown", str(again), "--workdir", str(new_work)])  # fmt: skip
    rebuilt = {
        (r["k"], r["selection"], r["method"]): r for r in json.loads(out.read_text())["groups"][0]["rows"]
    }
    assert (
        set(rebuilt) == expected and (new_work / "ombria-france" / "start" / "weights.safetensors").is_file()
    )
    for key, r in rebuilt.items():
        if key[2] == "calibrate-best":
            assert r["score"]["f1"] == pytest.approx(rows[key]["score"]["f1"])  # same start, same chips
    zero = latest["groups"][0]["zero_shot"]["f1"]
    latest["groups"][0]["zero_shot"]["f1"] = zero + 0.1  # a JSON the runs cannot reproduce is refused
    out.write_text(json.dumps(latest))
    refused = ["--add-methods", "calibrate-best", "--rebuild", "--real", str(real_data), "--json", str(out)]
    with pytest.raises(SystemExit, match=r"zero-shot F1 .* against the JSON's"):
        bench.main([*refused, "--workdir", str(tmp_path / "another")])
