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


@pytest.fixture(scope="module")
def db_group_run(bench: ModuleType, real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe trained with the dB group (C2S-MS + Sen1Floods11) held out, shared by the
    scripts that study one held-out run."""
    tmp = tmp_path_factory.mktemp("db-group")
    work = tmp / "work"
    bench.main([
        "--tiny", "--groups", "c2s-s1f11", "--rows", "recipe", "--real", str(real_data),
        "--json", str(tmp / "q.json"), "--markdown", str(tmp / "q.md"), "--workdir", str(work),
    ])  # fmt: skip
    return work / "c2s-s1f11" / "recipe"


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
        # F1 curves on val (per label kind) and on the held-out chips, one value per grid threshold
        assert (
            len(r["held_f1_curve"]["all"]) == 101
            and "water" in r["held_f1_curve"]
            and "all" in r["val_f1_curve"]
        )
        assert r["threshold_tolerance"] == 0.01  # cpu-small's rule
        # the recipe's rule, re-picked from the curves, gives the run's own held-out F1
        by_rule = bench.held_out_by_rule(r)
        assert by_rule is not None and set(by_rule) == {n for n, _ in bench.THRESHOLD_RULES}
        assert by_rule["within 1 point"] == pytest.approx(r["at_run_threshold"]["f1"], abs=0.02)
    assert rows["recipe"]["trainable_params"] > rows["frozen"]["trainable_params"]
    text = doc.read_text()
    assert "kept text" in text and bench.SECTION_BEGIN in text and bench.SECTION_END in text
    assert "ETCI Nebraska F1 / IoU" in text and "Recommended recipe" in text
    assert "The run's threshold: F1 in %" in text
    # the doc is a function of the JSON alone
    again = tmp_path / "again.md"
    bench.main(["--from-json", "--json", str(out), "--markdown", str(again)])
    section = text.split(bench.SECTION_BEGIN)[1]
    assert section == again.read_text().split(bench.SECTION_BEGIN)[1]
    assert result is not None and result["summary"]["means"]["recipe"]["f1"] == pytest.approx(
        rows["recipe"]["at_run_threshold"]["f1"]
    )


def test_precision_check_stores_the_f1_difference(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--precision-check GROUP` trains the recipe twice, fp32 then bf16, and stores the F1 gap and
    whether it is within the bound (workers replaced: the training itself is tested elsewhere)."""
    import floodlora.precision as prec

    calls: list[dict] = []

    def fake_worker(real: Path, group, row, budget: dict, work: Path) -> dict:
        calls.append({"row": row.name, "budget": budget})
        f1 = {"32-true": 0.600, "bf16-mixed": 0.594}[budget["train.precision"]]
        wall = {"32-true": 100.0, "bf16-mixed": 80.0}[budget["train.precision"]]
        return {"at_run_threshold": {"f1": f1}, "wall_seconds": wall}

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    monkeypatch.setattr(prec, "cpu_bf16_fast", lambda: (True, "amx_bf16; probe"))
    out = tmp_path / "qp.json"
    result = bench.main(["--precision-check", "c2s-s1f11", "--real", str(tmp_path), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert [c["row"] for c in calls] == ["recipe", "recipe"]
    assert [c["budget"]["train.precision"] for c in calls] == ["32-true", "bf16-mixed"]
    assert calls[0]["budget"]["train.max_epochs"] == bench.BUDGET["train.max_epochs"]
    assert saved["delta_f1_points"] == pytest.approx(-0.6)
    assert saved["within_bound"] is False and saved["bound_f1_points"] == pytest.approx(0.5)
    assert saved["bf16_speedup"] == pytest.approx(1.25) and saved["group"] == "c2s-s1f11"

    monkeypatch.setattr(prec, "cpu_bf16_fast", lambda: (False, "CPU without avx512_bf16 / amx_bf16"))
    calls.clear()
    skipped = bench.main(["--precision-check", "c2s-s1f11", "--real", str(tmp_path), "--json", str(out)])
    assert not calls and "nothing to compare" in skipped["skipped"] and "delta_f1_points" not in skipped
    with pytest.raises(SystemExit, match="unknown group"):
        bench.main(["--precision-check", "nowhere", "--real", str(tmp_path), "--json", str(out)])


def test_exploration_tables_show_the_oracle_only_where_runs_kept_it(bench: ModuleType) -> None:
    """The committed explorations: rows that kept their `oracle` show it; tables without any do not
    grow the column."""
    path = Path(bench.__file__).parent / "results" / "quality-explorations.json"
    data = json.loads(path.read_text())
    text = "\n".join(bench.explorations_markdown(path))
    kept = [r for r in data["after_label_kinds"] if r.get("oracle")]
    assert kept
    for r in kept:
        cell = f"{100 * r['oracle']['f1']:.1f} ({r['oracle']['threshold']:.2f})"
        assert any(r["what"] in line and cell in line for line in text.splitlines()), cell
    per_scene = text.split("### Per-scene normalisation")[1].split("###")[0]
    assert "Best on own labels" not in per_scene and "| Held out |" in per_scene
    # runs of the val-optimal threshold keep their own table, seed 0 from the main table of their time
    archived = text.split("### Over seeds, at the val-optimal threshold (before item 14)")[1].split("###")[0]
    old_main = {(r["row"], r["group"]): r for r in data["val_optimal_threshold"]["main"]["rows"]}
    seed0 = f"| {100 * old_main[('recipe', 'etci-nebraska')]['at_run_threshold']['f1']:.1f} |"
    assert "| ETCI Nebraska | Recommended recipe " + seed0 in archived
    assert "key val_optimal_threshold" in archived
    # the prior-fit runs: each beside the recipe it was compared with
    prior_fit = text.split("### The prior fitted on whole chips")[1].split("###")[0]
    assert data["prior_fit"]
    for r in data["prior_fit"]:
        ours, theirs = (f"{100 * m['f1']:.1f} / " for m in (r["at_run_threshold"], r["compared_with"]))
        assert any(r["what"] in line and ours in line and theirs in line for line in prior_fit.splitlines())


def test_db_scale_rescores_a_run_held_out_on_the_db_group(
    bench: ModuleType, db_group_run: Path, real_data: Path, tmp_path: Path
) -> None:
    """benchmarks/db_scale.py: the tiny recipe with the dB group held out, its dB chips rescored under
    each candidate preset; weights and threshold stay, so only the scale of the inputs differs."""
    db_scale = load_benchmark("db_scale")
    run = db_group_run
    out = tmp_path / "explorations.json"
    out.write_text(json.dumps({"note": "kept", "runs": []}))
    result = db_scale.main([str(run), "--json", str(out), "--data", str(real_data)])
    saved = json.loads(out.read_text())
    assert saved["note"] == "kept" and saved["db_scale"]["rows"] == result["rows"]
    rows = {r["preset"]: r for r in result["rows"]}
    assert list(rows) == [c[0] for c in db_scale.CANDIDATES]
    assert rows["clay-v1.5"]["spread_db"]["vv"] == pytest.approx(8.314)
    assert rows["floodlora-mini centre, spread 3"]["spread_db"] == {"vv": 3.0, "vh": 3.0}
    thresholds = {r["threshold"] for r in result["rows"]}
    assert len(thresholds) == 1  # the run's own threshold every time
    for r in result["rows"]:
        assert r["n_chips"] == 4 and 0.0 <= r["at_run_threshold"]["f1"] <= r["oracle"]["f1"] + 1e-9
    assert len({round(r["at_run_threshold"]["recall"], 6) for r in result["rows"]}) > 1
    assert "### The scale of dB data" in "\n".join(bench.explorations_markdown(out))


def test_db_chips_scores_the_db_group_chip_by_chip(
    bench: ModuleType, db_group_run: Path, real_data: Path, tmp_path: Path
) -> None:
    """benchmarks/db_chips.py: the held-out run, per-chip Otsu and all-water on each dB chip; each
    chip's counts pool back to the run's group F1, and without a chip to the run's F1 on the rest."""
    from floodlora.data.sources import discover
    from floodlora.training.engine import evaluate_run

    db_chips = load_benchmark("db_chips")
    out = tmp_path / "explorations.json"
    out.write_text(json.dumps({"note": "kept", "runs": []}))
    result = db_chips.main([str(db_group_run), "--json", str(out), "--data", str(real_data)])
    saved = json.loads(out.read_text())
    assert saved["note"] == "kept" and saved["db_chips"]["chips"] == result["chips"]
    assert len(result["chips"]) == 4
    assert {c["event"].split("-")[0] for c in result["chips"]} == {"c2s", "sen1floods11"}
    for c in result["chips"]:
        assert 0.0 < c["water_fraction"] < 1.0
        assert c["all_water"]["recall"] == pytest.approx(1.0)
        assert c["all_water"]["precision"] == pytest.approx(c["water_fraction"])
        counts = c["run"]["counts"]
        assert sum(counts.values()) == pytest.approx(c["n_pixels"]) and min(counts.values()) > -1e-6
    report = evaluate_run(db_group_run, split="ood", roots=[str(real_data)])
    assert result["pooled"]["run"] == pytest.approx(report["f1"], abs=1e-6)
    assert set(result["without"]) == {c["chip_id"] for c in result["chips"]}
    assert all(0.0 <= v <= 1.0 for row in result["without"].values() for v in row.values())
    # one labelled chip through `adapt`: 'before' is the pooled F1 of the other three, as above
    calibrated = result["calibrated_on_one"]
    assert set(calibrated) == set(result["without"])
    # the pooled-without-a-chip F1 is the run's own score on the other chips, evaluated afresh
    adapt_bench = load_benchmark("adapt")
    first = result["chips"][0]
    refs = [r for r in discover([str(real_data)]) if r.key in {c["key"] for c in result["chips"][1:]}]
    others = adapt_bench.subset_tree(real_data, refs, tmp_path / "others")
    direct = adapt_bench.score_run(db_group_run, others)["f1"]
    assert result["without"][first["chip_id"]]["run"] == pytest.approx(direct, abs=1e-6)
    for chip_id, c in calibrated.items():
        assert c["others_before"] == pytest.approx(result["without"][chip_id]["run"], abs=1e-6)
        assert 0.0 <= c["others_after"] <= 1.0 and 0.0 <= c["threshold"] <= 1.0 and c["output"] == "water"
    text = "\n".join(bench.explorations_markdown(out))
    assert "### The dB group chip by chip" in text
    assert f"All four pooled: run {100 * report['f1']:.1f}" in text
    assert "| Calibrated on | Threshold it set |" in text


def test_db_chips_each_scores_every_chip_with_the_run_that_held_it_out(
    bench: ModuleType, db_group_run: Path, real_data: Path, tmp_path: Path
) -> None:
    """--each: every chip is scored by the run that held out its event. With the group run standing
    in for the four one-event runs (it held out all four), each chip's score is the run's own; a
    workdir that holds out none of them stops with the chips it misses."""
    db_chips = load_benchmark("db_chips")
    each = tmp_path / "each"
    (each / "db-all").mkdir(parents=True)
    (each / "db-all" / "recipe").symlink_to(db_group_run)
    out = tmp_path / "explorations.json"
    out.write_text(json.dumps({"note": "kept", "runs": []}))
    args = [str(db_group_run), "--json", str(out), "--data", str(real_data), "--each"]
    result = db_chips.main([*args, str(each)])
    assert "--each EACH" in result["command"]
    assert "--groups db-jja,db-pxs,db-qxb,db-spain" in result["command"]
    for c in result["chips"]:
        assert c["each"]["f1"] == pytest.approx(c["run"]["f1"], abs=1e-9)
        assert c["each"]["counts"] == pytest.approx(c["run"]["counts"])
    assert result["each"]["pooled"] == pytest.approx(result["pooled"]["run"], abs=1e-9)
    assert set(result["each"]["runs"]) == {c["chip_id"] for c in result["chips"]}
    text = "\n".join(bench.explorations_markdown(out))
    assert "The other dB chips in training" in text
    assert text.count("| Spain_7370579 |") == 3  # the chips, one-chip calibration and --each tables
    (tmp_path / "none").mkdir()
    with pytest.raises(SystemExit, match=r"no run held out .*Spain_7370579"):
        db_chips.main([*args, str(tmp_path / "none")])


def test_extra_groups_run_only_when_named(bench: ModuleType) -> None:
    """The one-dB-event groups are not in the main table unless --groups names them."""
    default = [g.name for g in bench.select_groups(None)]
    assert default == ["ombria-test", "ombria-france", "etci-nebraska", "etci-northal", "c2s-s1f11"]
    assert [g.events for g in bench.select_groups("db-spain,db-jja")] == [("c2s-jja",), ("sen1floods11-*",)]
    with pytest.raises(SystemExit, match=r"unknown group.*db-nowhere.*choose from .*db-qxb"):
        bench.select_groups("db-nowhere")


def test_logit_sources_measures_each_part_of_a_held_out_run(
    bench: ModuleType, db_group_run: Path, real_data: Path, tmp_path: Path
) -> None:
    """benchmarks/logit_sources.py: the share of a run's logits that its token path, pixel stem and
    pixel prior move, on the group the run never saw; the prior's share is its own term exactly."""
    sources = load_benchmark("logit_sources")
    run = db_group_run
    out = tmp_path / "explorations.json"
    out.write_text(json.dumps({"note": "kept", "runs": []}))
    result = sources.main([f"recipe=c2s-s1f11={run}", "--json", str(out), "--data", str(real_data)])
    saved = json.loads(out.read_text())
    assert saved["note"] == "kept" and saved["logit_sources"]["rows"] == result["rows"]
    (row,) = result["rows"]
    assert row["label"] == "recipe" and row["held_out"] == "c2s-s1f11"
    assert row["decoder"] == "hires-bn" and row["strategy"] == "lora" and row["n_chips"] == 4
    assert row["logit_spatial_std"] > 0
    assert set(row["share"]) == {"token_path", "pixel_stem", "pixel_prior"}
    assert all(0.0 <= v < 10.0 for v in row["share"].values())
    assert row["share"]["pixel_stem"] > 0 and row["share"]["token_path"] > 0  # both feed the head
    text = "\n".join(bench.explorations_markdown(out))
    assert "### Where the logits come from" in text and "| recipe | c2s-s1f11 | `hires-bn` | lora |" in text
    with pytest.raises(SystemExit, match="LABEL=GROUP=RUN_DIR"):
        sources.main([str(run), "--json", str(out)])
    with pytest.raises(SystemExit, match="unknown group 'nowhere'"):
        sources.main([f"recipe=nowhere={run}", "--json", str(out)])


def test_rescore_adds_event_otsu_from_the_kept_runs(
    bench: ModuleType, db_group_run: Path, real_data: Path, tmp_path: Path
) -> None:
    work = db_group_run.parent.parent
    stored = json.loads((work.parent / "q.json").read_text())
    recipe = next(r for r in stored["rows"] if r["row"] == "recipe")
    otsu = recipe["event_otsu"]  # the worker records it
    assert 0.0 <= otsu["f1"] <= 1.0 and len(otsu["thresholds"]) >= 2  # the dB group's events, each its own
    assert all(0.0 <= t <= 1.0 for t in otsu["thresholds"].values())
    for r in stored["rows"]:
        r.pop("event_otsu", None)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(stored))
    doc = tmp_path / "q.md"
    rescore = ["--rescore", "--tiny", "--real", str(real_data), "--json", str(old), "--markdown", str(doc)]
    result = bench.main([*rescore, "--workdir", str(work)])
    again = next(r for r in result["rows"] if r["row"] == "recipe")
    assert again["event_otsu"]["thresholds"] == otsu["thresholds"]  # the same numbers, from the kept run
    assert again["event_otsu"]["f1"] == pytest.approx(otsu["f1"], abs=1e-6)
    assert again["rescored_f1"] == pytest.approx(recipe["at_run_threshold"]["f1"], abs=1e-6)
    command = json.loads(old.read_text())["rescored"]["command"]
    assert command.startswith("python benchmarks/quality.py --rescore ")
    text = doc.read_text()
    assert "Label-free operating point" in text and "own threshold matched the table above" in text
    with pytest.raises(SystemExit, match="--rescore needs --workdir"):
        bench.main(rescore)
    with pytest.raises(SystemExit, match="no kept run for c2s-s1f11/recipe"):
        bench.main([*rescore, "--workdir", str(tmp_path)])


def test_the_time_target_is_judged_from_the_recorded_wall_time(bench: ModuleType) -> None:
    """A full run's wall time is a target (90 minutes on 2 cores); a tiny run's is not judged."""
    result = {"tiny": False, "wall_seconds": 91 * 60.0, "rows": [], "groups": []}
    assert bench.summarise(result)["targets"]["benchmark_within_90_min"] == {"minutes": 91.0, "met": False}
    result["wall_seconds"] = 82 * 60.0
    assert bench.summarise(result)["targets"]["benchmark_within_90_min"]["met"] is True
    assert "benchmark_within_90_min" not in bench.summarise({**result, "tiny": True})["targets"]


def test_prior_features_fits_each_feature_set_on_real_ombria_chips(
    bench: ModuleType, real_data: Path, tmp_path: Path
) -> None:
    """benchmarks/prior_features.py --tiny: the flood prior's MLP alone on real OMBRIA chips, one
    row per feature set and seed, written under its own key and shown as an exploration table."""
    features = load_benchmark("prior_features")
    out = tmp_path / "explorations.json"
    out.write_text(json.dumps({"note": "kept", "runs": []}))
    result = features.main(["--tiny", "--seeds", "0", "--real", str(real_data), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["note"] == "kept" and saved["prior_features"]["rows"] == result["rows"]
    rows = {(r["held_out"], r["features"]): r for r in result["rows"]}
    forms = ("context", "context-quantiles")
    assert set(rows) == {(g, f) for g in ("ombria-test", "ombria-france") for f in forms}
    # two views (pre, post) of one band: 10 context features each, plus 4 quantiles and 2 textures
    assert rows["ombria-test", "context"]["n_features"] == 20
    assert rows["ombria-test", "context-quantiles"]["n_features"] == 32
    for r in result["rows"]:
        assert r["test_chips"] > 0 and r["train_pixels"] > 1000
        assert 0.0 < r["at_0.5"]["f1"] <= r["oracle"]["f1"] + 1e-9 <= 1.0 + 1e-9
    text = "\n".join(bench.explorations_markdown(out))
    assert "### The prior's features" in text and "| ombria-france | `context-quantiles` |" in text
    with pytest.raises(SystemExit, match="no ombria folder"):
        features.main(["--tiny", "--real", str(tmp_path), "--json", str(out)])


def test_water_prior_fits_each_form_as_training_does_on_real_etci_chips(
    bench: ModuleType, real_data: Path, tmp_path: Path
) -> None:
    """benchmarks/water_prior.py --tiny: the water prior alone, fitted by fit_pixel_prior with
    Nebraska held out, in its logistic and context forms, scored on Nebraska's real chips."""
    water = load_benchmark("water_prior")
    out = tmp_path / "explorations.json"
    out.write_text(json.dumps({"note": "kept", "runs": []}))
    result = water.main(["--tiny", "--real", str(real_data), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["note"] == "kept" and saved["water_prior"]["rows"] == result["rows"]
    rows = {r["form"]: r for r in result["rows"]}
    assert set(rows) == {"logistic (the recipe)", "context MLP"}
    assert rows["logistic (the recipe)"]["water_fit"]["form"] == "logistic"
    assert rows["context MLP"]["water_fit"]["form"] == "context"
    for r in result["rows"]:
        assert r["held_out"] == "etci-nebraska" and r["chips"] == 4  # the subset's Nebraska chips
        assert r["water_fit"]["fitted"] and r["water_fit"]["pixels"] > 1000
        assert 0.0 <= r["at_0.5"]["f1"] <= r["oracle"]["f1"] + 1e-9 <= 1.0 + 1e-9
    text = "\n".join(bench.explorations_markdown(out))
    assert (
        "### The water prior's form" in text and "| etci-nebraska | every other group | context MLP |" in text
    )
    with pytest.raises(SystemExit, match="no etci2021 folder"):
        water.main(["--tiny", "--real", str(tmp_path), "--json", str(out)])


def test_threshold_rules_pick_from_the_val_curve_and_score_the_held_out_curve(bench: ModuleType) -> None:
    """Val plateau 0.40-0.60 (F1 0.80) with 0.795 up to 0.70: val-optimal keeps the tie closest to
    0.5, the tolerance rules take the highest threshold within their margin; each is scored on the
    held-out curve at that same threshold."""
    val = [0.0] * 101
    for i in range(30, 40):
        val[i] = 0.70
    for i in range(40, 61):
        val[i] = 0.80
    for i in range(61, 71):
        val[i] = 0.795
    held = [i / 100 for i in range(101)]  # F1 equal to the threshold: easy to read back
    from floodlora.metrics import operating_index

    assert operating_index(val, 0.0) == 50 and operating_index(val, 0.005) == 70
    assert operating_index([0.0] * 101, 0.01) == 50  # no flood on val: the F1-optimal rule's tie
    row = {"val_f1_curve": {"all": val, "water": val}, "held_f1_curve": {"all": held, "water": held}}
    got = bench.held_out_by_rule(row)
    assert got == {"val-optimal": 0.5, "within 0.5 point": 0.7, "within 1 point": 0.7, "within 2 points": 0.7}
    assert bench.held_out_by_rule({"at_run_threshold": {"f1": 0.5}}) is None  # a run without curves
    # "Over seeds" adds the same runs' mean at the val-optimal threshold where they kept curves
    run = {"group": "etci-nebraska", "row": "recipe", "at_run_threshold": {"f1": 0.7}, **row}
    main = {"budget": {}, "tiny": False, "groups": [{"name": "etci-nebraska", "label": "ETCI Nebraska"}]}
    text = "\n".join(bench.seeds_markdown({**main, "rows": [run]}, {**main, "rows": [{**run, "seed": 1}]}))
    assert "| Mean at val-optimal |" in text
    assert "| ETCI Nebraska | Recommended recipe | 70.0 | 70.0 | 70.0 | 70.0–70.0 | – | – | 50.0 |" in text


def test_seeds_mode_merges_runs_per_seed_and_tabulates_them_beside_the_main_run(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--seeds` trains each selected model row once per seed (workers replaced: training is tested
    elsewhere), merges entries by (group, row, seed), and the doc's "Over seeds" table puts them
    beside the main table's seed-0 run with the mean and its verdict against the fitted threshold."""
    calls: list[tuple[str, str, dict]] = []
    f1 = {(1, "recipe"): 0.30, (2, "recipe"): 0.44, (1, "full"): 0.41, (2, "full"): 0.43}

    def fake_worker(real: Path, group, row, budget: dict, work: Path) -> dict:
        calls.append((group.name, row.name, budget))
        seed = budget["train.seed"]
        assert budget["data.seed"] == seed and work.name == f"seed-{seed}"
        return {
            "group": group.name,
            "row": row.name,
            "at_run_threshold": {"f1": f1[(seed, row.name)]},
            "wall_seconds": 1.0,
        }

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    out = tmp_path / "seeds.json"
    args = ["--groups", "etci-nebraska", "--rows", "recipe", "--real", str(tmp_path), "--json", str(out)]
    bench.main(["--seeds", "1,2", *args])
    assert [(c[1], c[2]["train.seed"]) for c in calls] == [("recipe", 1), ("recipe", 2)]
    assert calls[0][2]["train.max_epochs"] == bench.BUDGET["train.max_epochs"]  # the main table's budget
    # a second call adds another row and replaces seed 2 of the recipe; seed 1 is kept
    f1[(2, "recipe")] = 0.46
    bench.main(["--seeds", "2", *args[:2], "--rows", "recipe,full", *args[4:]])
    saved = json.loads(out.read_text())
    got = {(r["row"], r["seed"]): r["at_run_threshold"]["f1"] for r in saved["rows"]}
    assert got == {("recipe", 1): 0.30, ("recipe", 2): 0.46, ("full", 2): 0.43}
    assert all(r["command"].startswith("python benchmarks/quality.py --seeds") for r in saved["rows"])

    main = {
        "budget": bench.BUDGET,
        "tiny": False,
        "groups": [{"name": "etci-nebraska", "label": "ETCI Nebraska"}],
        "rows": [
            {
                "group": "etci-nebraska",
                "row": "recipe",
                "at_run_threshold": {"f1": 0.35, "precision": 0.32, "recall": 0.40},
                "oracle": {"f1": 0.45},
            },
            {"group": "etci-nebraska", "row": "fitted", "at_run_threshold": {"f1": 0.393}},
        ],
    }
    text = "\n".join(bench.seeds_markdown(main, saved))
    assert (
        "| ETCI Nebraska | Recommended recipe | 35.0 | 30.0 | 46.0 | 37.0 | 30.0–46.0 | 32.0 / 40.0 | 45.0 |"
        in text
    )
    assert (
        "| ETCI Nebraska | Full fine-tuning, hires-bn decoder | – | – | 43.0 | 43.0 | 43.0–43.0 | – | – |"
        in text
    )
    assert "mean over 3 seeds 37.0 against the fitted threshold's 39.3: **not met**" in text
    assert "met by 1 of 3 runs" in text
    # another budget's runs are not averaged with the main table's seed 0, nor merged into its file
    assert "| 30.0 | 46.0 | 38.0 |" in "\n".join(bench.seeds_markdown({**main, "budget": {}}, saved))
    with pytest.raises(SystemExit, match="another budget"):
        bench.main(["--seeds", "1", *args, "--set", "train.max_epochs=9"])
    with pytest.raises(SystemExit, match="expected comma-separated integers"):
        bench.main(["--seeds", "one", *args])
    # runs made with another operating-point rule are not merged either
    other_rule = tmp_path / "other-rule.json"
    other_rule.write_text(json.dumps({**saved, "rows": [{**saved["rows"][0], "threshold_tolerance": 0.0}]}))
    with pytest.raises(SystemExit, match=r"another train\.threshold_tolerance than 0\.01"):
        bench.main(["--seeds", "1", *args[:6], "--json", str(other_rule)])

    # a call that stops after its first run keeps that run
    def failing_second(real: Path, group, row, budget: dict, work: Path) -> dict:
        if budget["train.seed"] == 4:
            raise KeyboardInterrupt
        return fake_worker(
            real, group, row, {**budget, "train.seed": 1, "data.seed": 1}, work.with_name("seed-1")
        )

    monkeypatch.setattr(bench, "_run_worker", failing_second)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--seeds", "3,4", *args])
    assert {r["seed"] for r in json.loads(out.read_text())["rows"]} == {1, 2, 3}
