"""`floodlora adapt`: a few labelled chips -> an ordinary run that keeps FROM's normalisation."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from floodlora.cli import app
from floodlora.data.sources._common import ChipRef
from floodlora.errors import ConfigError
from floodlora.models.clay import checkpoint_sha256
from floodlora.training.adapt import AdaptOptions, adapt, choose_holdout, format_summary, whole_chip_crop
from inference_helpers import db_scene, make_run, write_scene

FAST = AdaptOptions(steps_per_epoch=2, batch_size=2, crop_size=32, max_epochs=2, method="fine-tune")
FROM_NORM = {"folder": {"name": "from-run", "units": "db", "mean": {"vv": -11.5, "vh": -18.25},
                        "std": {"vv": 3.5, "vh": 4.0}}}  # fmt: skip


def _chips(root: Path, n: int, seed: int = 0) -> Path:
    from floodlora.data.synthetic import write_folder_dataset

    write_folder_dataset(root, n, 64, seed=seed, splits={"chips": 1.0})
    return root


@pytest.fixture(scope="module")
def from_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("from") / "run", crop=32)
    (run / "normalization.json").write_text(json.dumps(FROM_NORM))
    return run


@pytest.fixture(scope="module")
def off_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose operating point is far off: -4 on its final logit bias, so at 0.5 it flags
    nothing (F1 0 on chips with flood) and a lower threshold is strictly better whatever the random
    decoder (calibration must move it). (+4 flagged everything at 0.5: some decoders then rank no
    better than that, the F1 curve is flat and 0.5 already tops it.) Seeded, so that it does not
    depend on what earlier tests drew."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(0)
        run = make_run(tmp_path_factory.mktemp("off") / "run", crop=32)
    (run / "normalization.json").write_text(json.dumps(FROM_NORM))
    weights = run / "weights.safetensors"
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    tensors["head.net.2.bias"] = tensors["head.net.2.bias"] - 4.0
    save_file(tensors, str(weights), metadata=meta)
    return run


def test_adapt_five_chips_gives_a_run_that_predict_uses(from_run: Path, tmp_path: Path) -> None:
    from floodlora.inference.predict import PredictOptions, predict_run
    from floodlora.runs import load_run

    data = _chips(tmp_path / "chips", 5)
    out = tmp_path / "adapted"
    # without the operating point set afterwards (next test): the threshold fine-tuning leaves
    result = adapt(from_run, data, out, options=replace(FAST, calibrate_after=False))
    assert result.run_dir == out
    s = json.loads((out / "adapt.json").read_text())
    assert s == result.summary
    assert s["from"]["kind"] == "run" and s["from"]["sha256"] == checkpoint_sha256(
        from_run / "weights.safetensors"
    )
    assert len(s["chips"]["train"]) == 5 and s["chips"]["held_back"] == []
    assert s["early_stopping_on"] == "training chips' loss" and s["threshold"] == 0.5
    assert 1 <= s["epochs"] <= 2 and 0.0 <= s["f1"] <= 1.0
    # FROM's normalisation travels unchanged; the threshold stays 0.5 (nothing held back to choose one)
    assert json.loads((out / "normalization.json").read_text()) == FROM_NORM
    metrics = json.loads((out / "metrics.json").read_text())
    assert "best_threshold" not in metrics and metrics["train_chips"]["n_chips"] == 5

    loaded = load_run(out)
    assert loaded.threshold == 0.5 and loaded.presets["folder"].mean["vv"] == -11.5
    assert loaded.base["strategy"] == "lora" and loaded.base["checkpoint"] == "random:test-micro"
    before = load_run(from_run).model.state_dict()
    changed = [k for k, v in loaded.model.state_dict().items() if "lora_B" in k and not v.equal(before[k])]
    assert changed, "adapt must change the LoRA adapters"

    scene = write_scene(tmp_path / "post.tif", db_scene(48, 40))
    pred = predict_run(out, {"post": scene}, tmp_path / "mask.tif", options=PredictOptions(tile=32))
    import rasterio

    with rasterio.open(pred.out) as ds:
        mask = ds.read(1)
    assert mask.shape == (48, 40) and set(np.unique(mask)) <= {0, 1}

    res = CliRunner().invoke(app, ["evaluate", str(out), "--split", "all"])
    assert res.exit_code == 0, res.output
    assert "0.50 (default)" in res.output


def test_fine_tuning_then_sets_the_operating_point_on_every_chip(off_run: Path, tmp_path: Path) -> None:
    """After fine-tuning (`calibrate_after`, the default) each output's threshold on all labelled
    chips, trained and held back (--hold-back), moves to 0.5: by default (tolerance 0 after
    fine-tuning) the best F1 there. `evaluate` on those chips then scores what adapt reported."""
    from floodlora.training.engine import evaluate_run

    data = _chips(tmp_path / "chips", 10, seed=3)
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["adapt", str(off_run), "--data", str(data), "--out", str(out), "--crop-size", "32",
         "--max-epochs", "1", "--steps", "1", "--method", "fine-tune", "--hold-back", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "8 trained, 2 held back" in res.output
    assert "then operating point set on all 10 labelled chips" in res.output
    s = json.loads((out / "adapt.json").read_text())
    after = s["calibrated_after"]
    assert after["from_threshold"] == pytest.approx(s["fine_tune_threshold"]) and after["tolerance"] == 0.0
    assert after["f1_best"] >= after["f1_before"] - 1e-9 and after["f1"] == pytest.approx(after["f1_best"])
    (cal,) = after["output_calibration"].values()
    assert 0.0 <= cal["threshold"] < 0.5  # one step cannot undo the -4 bias: the chips want a lower one
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold_source"] == "calibrated on every labelled chip" and s["threshold"] == 0.5
    assert metrics["val"]["n_chips"] == 2  # the held-back chips' report is kept
    assert metrics["calibrated_chips"]["n_chips"] == 10
    report = evaluate_run(out, roots=[str(data)], split="all")
    assert report["threshold"] == 0.5 and report["f1"] == pytest.approx(after["f1"], abs=0.02)


def _flood_only(root: Path) -> Path:
    """The chips with every dry pixel unlabelled (255): what `labels` writes without --dry or --aoi."""
    import rasterio

    for mask in root.glob("chips/*/mask.tif"):
        with rasterio.open(mask, "r+") as ds:
            labels = ds.read(1)
            labels[labels == 0] = 255
            ds.write(labels, 1)
    return root


def test_chips_without_dry_pixels_set_no_operating_point(
    off_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """With no dry pixel labelled, no false alarm can be counted and every threshold down to 0
    would look best: calibration refuses (one line), fine-tuning keeps its own threshold."""
    from floodlora import cli

    data = _flood_only(_chips(tmp_path / "chips", 5, seed=3))
    argv = ["floodlora", "adapt", str(off_run), "--data", str(data), "--out", str(tmp_path / "c")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert "hold no dry pixel (mask 0)" in err and "--dry or --aoi" in err
    with pytest.warns(UserWarning, match="operating point not set after fine-tuning"):
        result = adapt(off_run, data, tmp_path / "ft", options=FAST)
    assert result.summary["calibrated_after"] is None
    assert result.summary["threshold"] == result.summary["fine_tune_threshold"] == 0.5


def test_adapt_holds_back_chips_from_a_merged_export(from_run: Path, tmp_path: Path) -> None:
    from floodlora.inference.export import export_run
    from floodlora.runs import load_run

    merged = tmp_path / "merged"
    export_run(from_run, merged, merge=True)
    data = _chips(tmp_path / "chips", 10, seed=3)
    res = CliRunner().invoke(
        app,
        ["adapt", str(merged), "--data", str(data), "--out", str(tmp_path / "run"), "--crop-size", "32",
         "--max-epochs", "1", "--steps", "1", "--method", "fine-tune", "--hold-back", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "8 trained, 2 held back" in res.output
    s = json.loads((tmp_path / "run" / "adapt.json").read_text())
    assert s["from"]["kind"] == "merged" and len(s["chips"]["held_back"]) == 2
    assert s["from"]["sha256"] == checkpoint_sha256(merged / "weights.safetensors")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val"]["n_chips"] == 2 and 0 < metrics["best_threshold"] < 1
    loaded = load_run(tmp_path / "run")  # merged again: standalone, every weight stored
    assert loaded.base["strategy"] == "full" and loaded.presets["folder"].mean["vh"] == -18.25


def test_adapt_trains_every_chip_by_default(from_run: Path, tmp_path: Path) -> None:
    """10 chips, none held back (the default): early stopping follows the chips that train."""
    data = _chips(tmp_path / "chips", 10, seed=3)
    res = CliRunner().invoke(
        app,
        ["adapt", str(from_run), "--data", str(data), "--out", str(tmp_path / "run"), "--crop-size", "32",
         "--max-epochs", "1", "--steps", "1", "--method", "fine-tune", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "run" / "adapt.json").read_text())
    assert len(s["chips"]["train"]) == 10 and s["chips"]["held_back"] == []
    assert "10 trained, 0 held back; early stopping on the training chips (none held back)" in res.output
    assert s["budget"]["hold_back"] is False and s["early_stopping_on"] == "training chips' loss"


def test_adapt_from_an_adapter_file(from_run: Path, tmp_path: Path) -> None:
    from floodlora.inference.export import export_run

    export_run(from_run, tmp_path / "exp", adapter="flood-a")
    opts = AdaptOptions(steps_per_epoch=1, batch_size=2, crop_size=32, max_epochs=1, method="fine-tune")
    # an export folder holding one adapter file is accepted as well as the file itself
    result = adapt(tmp_path / "exp", _chips(tmp_path / "chips", 3), tmp_path / "run", options=opts)
    src = result.summary["from"]
    assert src["kind"] == "adapter" and src["path"].endswith("flood-a.safetensors")
    assert src["sha256"] == checkpoint_sha256(tmp_path / "exp" / "flood-a.safetensors")
    assert src["base_checkpoint"] == "random:test-micro"
    assert json.loads((tmp_path / "run" / "normalization.json").read_text()) == FROM_NORM


def test_new_8bit_source_gets_statistics_of_the_adaptation_chips(tmp_path: Path) -> None:
    import yaml

    from floodlora.data.sar import NormalizationPreset
    from floodlora.training.adapt import _presets_for

    data = _chips(tmp_path / "chips", 2)
    spec = yaml.safe_load((data / "dataset.yaml").read_text())
    (data / "dataset.yaml").write_text(yaml.safe_dump({**spec, "units": "scaled-uint8"}))
    fixed = {"ombria": NormalizationPreset("ombria-stats", "scaled-uint8", {"vv": 90.0}, {"vv": 30.0})}
    presets = _presets_for([str(data)], None, fixed, "auto", "clay-v1.5")
    assert presets["ombria"] is fixed["ombria"]  # FROM's own sources keep FROM's numbers
    assert presets["folder"].units == "scaled-uint8" and -30 < presets["folder"].mean["vv"] < 0
    assert _presets_for([str(data)], None, {}, "auto", "clay-v1.5") == {}  # bare encoder: auto, later


def test_fine_tuning_trains_on_whole_chips_by_default(from_run: Path, tmp_path: Path) -> None:
    """Without a crop or batch size, samples are whole chips, batched to the recipes' pixels per step."""
    from floodlora.config import load_config
    from floodlora.training.adapt import STEP_PIXELS

    opts = replace(FAST, crop_size=None, batch_size=None, max_epochs=1, steps_per_epoch=1)
    result = adapt(from_run, _chips(tmp_path / "chips", 3), tmp_path / "run", options=opts)
    assert result.summary["samples"] == {"crop_size": 64, "batch_size": STEP_PIXELS // 64**2}
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert (cfg.data.crop_size, cfg.data.batch_size) == (64, 32)  # the run records what trained
    assert "batches of 32 x 64 px" in format_summary(result.summary)


@pytest.mark.parametrize(("side", "crop"), [(64, 64), (256, 256), (512, 256), (100, 96), (5, 8)])
def test_whole_chip_crop(side: int, crop: int) -> None:
    assert whole_chip_crop(side) == crop


def test_adapt_options_refuse_a_crop_that_is_not_a_multiple_of_8_and_an_empty_batch() -> None:
    with pytest.raises(ConfigError, match="crop size must be a positive multiple of 8, got 30"):
        AdaptOptions(crop_size=30)
    with pytest.raises(ConfigError, match="batch size and max epochs must be >= 1"):
        AdaptOptions(batch_size=0)  # 0 is not "unset": it must not fall back to the default


def test_choose_holdout_spreads_flood() -> None:
    refs = [ChipRef(f"c{i}", "e", "folder", None, {}, "db", True, {}) for i in range(12)]
    flood = [i < 3 for i in range(12)]
    held = choose_holdout(refs, flood, 0.25, 8)
    assert len(held) == 3
    wet = [r for r in held if flood[int(r.chip_id[1:])]]
    assert len(wet) == 1  # at most half of the 3 flooded chips, at least one
    assert choose_holdout(refs[:7], flood[:7], 0.25, 8) == []
    assert choose_holdout(refs, flood, 0.25, 8, seed=0) == held  # deterministic


@pytest.mark.parametrize(
    ("from_", "message"),
    [("no-such-encoder", "no such checkpoint file or name"), ("DRY", "none of the 2 labelled chips")],
)
def test_adapt_bad_inputs_are_one_line(
    from_: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from floodlora import cli
    from floodlora.data.synthetic import write_folder_dataset

    data = tmp_path / "chips"
    write_folder_dataset(data, 2, 32, splits={"chips": 1.0})
    if from_ == "DRY":
        import rasterio

        for mask in data.glob("chips/*/mask.tif"):
            with rasterio.open(mask, "r+") as ds:
                ds.write(np.zeros((1, 32, 32), np.uint8))
        from_ = "random:test-micro"
    argv = ["floodlora", "adapt", from_, "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_generalist_config_matches_its_committed_measurement() -> None:
    """Packaged generalist recipe: pre + post with view dropout; the committed benchmark measured this
    very config (its wall time is the benchmark's claim, not this test's)."""
    from conftest import BENCHMARKS
    from floodlora.config import load_config, packaged_configs

    assert "generalist" in packaged_configs()
    cfg = load_config("generalist")
    small = load_config("cpu-small")
    assert cfg.model.checkpoint == "embedded" and cfg.model.strategy == "lora" and cfg.data.roots == []
    assert cfg.data.views == ["pre", "post"] and cfg.model.view_dropout > 0  # post-only input is trained
    assert cfg.data.balance_sources and cfg.data.flood_sampling > 0 and not cfg.data.holdout_events
    assert (cfg.train.lr, cfg.data.crop_size) == (small.train.lr, 128)
    # the recipe's decoder, as benchmarks/adapt.py measured it (docs/quality.md)
    assert (cfg.model.decoder, cfg.model.pixel_dropout) == (small.model.decoder, small.model.pixel_dropout)
    assert (cfg.model.decoder, cfg.model.pixel_dropout) == ("hires-bn", 0.5)
    # every later step of the recipe, as benchmarks/generalist.py and adapt.py measured it: the context
    # prior with tile quantiles for flood fitted on whole chips, logistic for water, the 1-point rule
    assert cfg.model.prior_features == small.model.prior_features == "context-quantiles"
    assert cfg.model.prior_context_kinds == small.model.prior_context_kinds == ["flood"]
    assert cfg.model.prior_fit == small.model.prior_fit == "whole-context"
    assert cfg.train.threshold_tolerance == small.train.threshold_tolerance == 0.01
    # the committed measurement of this very config (benchmarks/generalist.py) fits in 45 minutes
    measured = json.loads((BENCHMARKS / "results" / "generalist.json").read_text())
    run, t = measured["run"], cfg.train
    assert measured["tiny"] is False and measured["overrides"] == {} and run["checkpoint"] == "embedded"
    assert (run["max_epochs"], run["steps_per_epoch"], run["max_minutes"]) == (
        t.max_epochs, t.limit_train_batches, t.max_minutes
    )  # fmt: skip
    assert set(run["normalization"]) >= {"ombria", "etci2021", "c2s", "sen1floods11"}  # every source
    assert measured["within_budget"] == (run["wall_seconds"] / 60 <= 45)
    repo = Path(__file__).resolve().parents[1] / "configs" / "generalist.yaml"
    assert load_config(repo) == cfg


def test_a_trained_from_is_calibrated_by_default_and_nothing_trains(off_run: Path, tmp_path: Path) -> None:
    from floodlora.runs import load_run

    from_run = off_run
    data = _chips(tmp_path / "chips", 5, seed=3)
    out = tmp_path / "calibrated"
    argv = ["adapt", str(from_run), "--data", str(data), "--out", str(out)]  # method auto
    # tolerance 0: the best threshold on the chips, however little better than FROM's own
    res = CliRunner().invoke(app, [*argv, "--calibrate-tolerance", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "operating point set on all 5 labelled chips" in res.output and "tolerance 0)" in res.output
    s = json.loads((out / "adapt.json").read_text())
    assert s["method"] == "calibrate" and s["epochs"] == 0 and len(s["chips"]["calibrated_on"]) == 5
    (cal,) = s["output_calibration"].values()
    assert 0.0 <= cal["threshold"] < 0.5  # the -4 bias put the best threshold far below 0.5
    # the best threshold found on the chips is now 0.5: F1 there is at least what FROM reached
    assert s["f1"] >= s["f1_before"] - 1e-9
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold_source"] == "calibrated on every labelled chip"
    assert metrics["best_threshold"] == pytest.approx(0.5, abs=0.02)
    before, after = load_run(from_run).model, load_run(out).model
    changed = [k for k, v in after.state_dict().items() if not v.equal(before.state_dict()[k])]
    assert changed == [k for k in changed if k.startswith("head.")] and len(changed) == 1  # the bias only
    assert json.loads((out / "normalization.json").read_text()) == FROM_NORM


def test_calibration_needs_a_trained_model_and_auto_fine_tunes_an_encoder(tmp_path: Path) -> None:
    from floodlora.errors import ConfigError
    from floodlora.training.adapt import resolve_method, resolve_origin

    data = _chips(tmp_path / "chips", 3)
    with pytest.raises(ConfigError, match="bare encoder"):
        adapt("random:test-micro", data, tmp_path / "o", options=AdaptOptions(method="calibrate"))
    assert not (tmp_path / "o").exists()
    assert resolve_method("auto", resolve_origin("random:test-micro")) == "fine-tune"
    with pytest.raises(ConfigError, match="unknown method 'retrain'"):
        AdaptOptions(method="retrain")


def test_a_merged_export_is_calibrated_into_a_standalone_run(off_run: Path, tmp_path: Path) -> None:
    from floodlora.inference.export import export_run
    from floodlora.runs import load_run

    merged = tmp_path / "merged"
    export_run(off_run, merged, merge=True)
    chips = _chips(tmp_path / "chips", 4, seed=5)
    result = adapt(merged, chips, tmp_path / "run", options=AdaptOptions(calibrate_tolerance=0.0))
    assert result.summary["method"] == "calibrate" and result.summary["from"]["kind"] == "merged"
    loaded = load_run(tmp_path / "run")
    assert loaded.base["strategy"] == "full" and loaded.presets["folder"].mean["vh"] == -18.25
    before = load_run(merged).model.state_dict()
    changed = [k for k, v in loaded.model.state_dict().items() if not v.equal(before[k])]
    assert len(changed) == 1 and changed[0].startswith("head.")  # the final bias, nothing else


def test_calibration_moves_only_as_far_as_the_chips_demand(off_run: Path, tmp_path: Path) -> None:
    """With a tolerance the calibrated threshold is the one nearest FROM's own among those within it
    of the best F1 on the chips; tolerance 0 is the best. Both are scored on the same chips."""
    from floodlora.runs import load_run

    chips = _chips(tmp_path / "chips", 4, seed=5)
    best = adapt(off_run, chips, tmp_path / "best", options=AdaptOptions(calibrate_tolerance=0.0)).summary
    near = adapt(off_run, chips, tmp_path / "near", options=AdaptOptions(calibrate_tolerance=0.05)).summary
    assert near["budget"] == {"method": "calibrate", "calibrate_tolerance": 0.05}
    anchor = load_run(off_run).threshold or 0.5
    (t_best,) = (c["threshold"] for c in best["output_calibration"].values())
    (t_near,) = (c["threshold"] for c in near["output_calibration"].values())
    assert abs(t_near - anchor) <= abs(t_best - anchor)
    assert near["f1"] >= best["f1"] - 0.05 - 1e-9 and best["f1"] >= near["f1"] - 1e-9
    assert near["f1_best"] == pytest.approx(best["f1_best"], abs=0.02)  # one curve, two rules
    with pytest.raises(ConfigError, match="calibrate tolerance must be in"):
        AdaptOptions(calibrate_tolerance=1.5)
