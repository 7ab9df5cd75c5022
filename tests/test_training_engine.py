"""train / evaluate / sweep end to end on a tiny generated dataset with a micro encoder."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from floodlora.cli import app
from floodlora.config import RunConfig, load_config, packaged_configs
from floodlora.errors import ConfigError, FloodLoraError
from floodlora.training.engine import evaluate_run, train_run
from floodlora.training.sweep import EvalSet, sweep

TINY = ["--set", "data.crop_size=32", "--set", "data.batch_size=2", "--set", "train.limit_val_batches=2"]
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "iou", "dice")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from floodlora.data.synthetic import write_folder_dataset

    root = tmp_path_factory.mktemp("data") / "syn"
    write_folder_dataset(root, 8, 64, splits={"train": 0.5, "val": 0.25, "test": 0.25})
    return root


def _config(data: Path, strategy: str = "lora", **train: object) -> RunConfig:
    cfg = RunConfig()
    cfg.data.roots = [str(data)]
    cfg.data.crop_size = 32
    cfg.data.batch_size = 2
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.strategy = strategy
    cfg.model.lora_rank = 2
    cfg.train.max_epochs = 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_cli_train_then_evaluate(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--strategy", "lora", "--rank", "2",
            "--checkpoint", "random:test-micro", "--max-epochs", "1", "--out", str(run), *TINY]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Accuracy | Precision | Recall | F1 | IoU | Dice" in result.output
    for name in ("config.yaml", "weights.safetensors", "base.json", "metrics.json", "accounting.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "logs" / "metrics.csv").is_file()
    base = json.loads((run / "base.json").read_text())
    assert base["checkpoint"] == "random:test-micro" and base["sha256"]
    from safetensors.torch import load_file

    enc = [k for k in load_file(str(run / "weights.safetensors")) if k.startswith("encoder.")]
    assert enc and all("lora_" in k for k in enc), "a LoRA run must not store base weights"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics["test"]) and metrics["test"]["n_chips"] == 2
    assert 0.0 <= metrics["best_threshold"] <= 1.0
    acc = json.loads((run / "accounting.json").read_text())
    for key in ("peak_memory_gb", "trainable_params", "total_params", "seconds_per_epoch",
                "samples_per_second", "time_to_best_val_f1_s"):  # fmt: skip
        assert acc[key] is not None and acc[key] > 0, key
    assert acc["trainable_params"] < acc["total_params"]

    out_json = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", str(run), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    # the run's threshold (chosen on val) is the default; 0.5 is reported next to it
    assert set(METRIC_KEYS) <= set(report) and report["threshold"] == metrics["best_threshold"]
    assert report["threshold_source"] == "val (run)"
    assert all(0.0 <= report[k] <= 1.0 for k in METRIC_KEYS)
    assert list(report["per_event"]) == ["synthetic-in"] and len(report["per_chip"]) == 2
    assert report["f1"] == pytest.approx(metrics["test"]["at_best_threshold"]["f1"])  # same weights, chips
    # the split's own best threshold bounds every threshold's F1 on it, the run's and 0.5 included
    oracle = report["oracle"]
    assert 0.0 <= oracle["threshold"] <= 1.0
    assert oracle["f1"] >= max(report["f1"], metrics["test"]["f1"]) - 1e-9
    if report["threshold"] != 0.5:
        assert report["at_threshold_0.5"]["f1"] == pytest.approx(metrics["test"]["f1"])
    assert json.loads((run / "normalization.json").read_text())  # the presets travel with the run
    forced = json.loads(
        CliRunner().invoke(app, ["evaluate", str(run), "--threshold", "0.5", "--json", str(out_json)]).output
        and out_json.read_text()
    )
    assert forced["threshold"] == 0.5 and forced["threshold_source"] == "--threshold"
    # an operating point far from the chips' own best one is named, with the command that fixes it
    off = CliRunner().invoke(app, ["evaluate", str(run), "--threshold", "0.999", "--json", str(out_json)])
    report_off = json.loads(out_json.read_text())
    assert report_off["oracle"]["f1"] > report_off["f1"] + 0.05
    assert "operating point does not fit these chips" in off.output and "floodlora adapt RUN" in off.output
    assert forced["f1"] == pytest.approx(metrics["test"]["f1"])


def test_cli_user_errors_are_one_line(tiny_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from floodlora import cli

    monkeypatch.setattr(sys, "argv", ["floodlora", "evaluate", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert "not a floodlora run directory" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["floodlora", "train", "--data", str(tiny_data), "--out", str(tmp_path),
                                      "--config", "no-such-config"])  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main()
    assert "packaged configs: cpu-small, generalist, paper" in capsys.readouterr().err


def test_resume_continues_from_last_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(FloodLoraError, match="nothing to resume"):
        train_run(_config(tiny_data), run, resume=True)
    first = train_run(_config(tiny_data, limit_train_batches=1), run)
    assert first.accounting["epochs"] == 1
    with pytest.raises(FloodLoraError, match="already holds a run"):
        train_run(_config(tiny_data), run)
    second = train_run(_config(tiny_data, limit_train_batches=1, max_epochs=2), run, resume=True)
    assert second.accounting["epochs"] == 2  # restored epoch 0 + ran epoch 1
    epochs = sorted({int(r["epoch"]) for r in _csv_rows(run) if r.get("val_loss")})
    assert epochs == [1] and (run / "logs" / "metrics.session-1.csv").is_file()  # earlier session kept
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert not any(k.startswith("model.encoder.") and "lora_" not in k for k in ckpt["state_dict"])


def test_score_names_the_splits_scored_after_training(tiny_data: Path, tmp_path: Path) -> None:
    scored = train_run(_config(tiny_data, "frozen", limit_train_batches=1), tmp_path / "all")
    assert scored.metrics["test"]["n_chips"] >= 1
    val_only = train_run(_config(tiny_data, "frozen", limit_train_batches=1), tmp_path / "val", score=())
    assert "test" not in val_only.metrics and val_only.metrics["val"]["n_chips"] >= 1
    saved = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert "test" not in saved and saved["best_threshold"] == val_only.metrics["best_threshold"]


def test_early_stopping_and_plateau_schedule_follow_config(tiny_data: Path, tmp_path: Path) -> None:
    # Zero loss weights: zero gradients, so nothing moves and val loss is flat from the first epoch.
    cfg = _config(tiny_data, "frozen", lr=1e-3, max_epochs=20, early_stopping_patience=3, plateau_patience=1,
                  bce_weight=0.0, dice_weight=0.0, limit_train_batches=1, limit_val_batches=1)  # fmt: skip
    result = train_run(cfg, tmp_path / "run")
    assert result.accounting["epochs"] == 4  # best at epoch 0, then 3 epochs without improvement
    assert result.accounting["early_stopped"] is True
    lrs = [float(r["lr-Adam"]) for r in _csv_rows(tmp_path / "run") if r.get("lr-Adam")]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])  # halved once 2 bad epochs exceed patience 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(5e-4)


def test_sweep_table_with_an_out_of_memory_strategy(tiny_data: Path, tmp_path: Path) -> None:
    # test-micro: frozen needs ~10 MB of tensors, full needs 23 MB for weights + grads + Adam alone.
    cfg = _config(tiny_data, memory_cap_gb=0.012, limit_train_batches=1)
    out = tmp_path / "sweep"
    result = sweep(cfg, "frozen,full", out, [EvalSet("unseen", [str(tiny_data)], None, "test")])
    by_name = {r["strategy"]: r for r in result.rows}
    assert by_name["full"]["status"] == "OOM" and "0.012 GB cap" in by_name["full"]["error"]
    assert by_name["full"]["trainable_params"] == by_name["full"]["total_params"] > 0
    assert by_name["frozen"]["status"] == "ok" and 0.0 <= by_name["frozen"]["f1"] <= 1.0
    assert by_name["frozen"]["unseen_f1"] == pytest.approx(by_name["frozen"]["f1"])
    md = (out / "sweep.md").read_text()
    assert "| Strategy | F1 | Accuracy | Precision |" in md and "Peak memory (GB) | Trainable params" in md
    assert "| Tensor memory (GB) |" in md
    assert any(line.startswith("| full | OOM |") for line in md.splitlines())
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["strategy"] for r in rows] == ["frozen", "full"]
    assert json.loads((out / "sweep.json").read_text())["rows"][1]["status"] == "OOM"
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "frozen" / "metrics.json").is_file() and (out / "full" / "accounting.json").is_file()


def test_evaluate_split_errors_and_other_data(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_run(_config(tiny_data, "frozen", limit_train_batches=1), run)
    with pytest.raises(FloodLoraError, match="ood split is empty"):
        evaluate_run(run, split="ood")
    with pytest.raises(ConfigError, match="unknown split"):
        evaluate_run(run, split="nope")
    everything = evaluate_run(run, [str(tiny_data)], split="all")
    assert everything["n_chips"] == 8 and everything["missing_views"] == []
    post_only = evaluate_run(run, [str(tiny_data)], split="all", views=["post"])
    assert post_only["n_chips"] == 8 and post_only["missing_views"] == ["pre"]
    with pytest.raises(ConfigError, match="the run has views pre,post"):
        evaluate_run(run, split="all", views=["post_asc"])


def test_packaged_configs() -> None:
    assert {"paper", "cpu-small"} <= set(packaged_configs())
    paper = load_config("paper")
    assert paper.model.checkpoint == "clay-v1-base" and paper.data.crop_size == 512
    assert paper.data.views == ["pre_asc", "pre_desc", "post_asc", "post_desc"]
    t = paper.train
    recipe = (t.lr, t.weight_decay, t.plateau_factor, t.plateau_patience, t.early_stopping_patience)
    assert recipe == (1e-4, 1e-4, 0.5, 3, 2) and t.max_epochs == 50
    small = load_config("cpu-small")
    assert small.model.checkpoint == "embedded" and small.train.precision == "32-true"
    assert isinstance(small.train.limit_train_batches, int)
    repo_configs = Path(__file__).resolve().parents[1] / "configs"
    for name in ("paper", "cpu-small"):
        assert load_config(repo_configs / f"{name}.yaml") == load_config(name)
    assert copy.deepcopy(small) == small


def test_weight_averaging_keeps_the_average_of_every_step(tiny_data: Path, tmp_path: Path) -> None:
    """`train.weight_averaging: swa`: the checkpoint, val and the run's weights hold the uniform
    average over the optimiser steps (the last step's weights are kept beside it for --resume)."""
    from safetensors.torch import load_file

    def config(epochs: int) -> RunConfig:
        cfg = _config(tiny_data, "lora", limit_train_batches=2, max_epochs=epochs, weight_averaging="swa")
        cfg.model.decoder = "hires-bn"  # BatchNorm buffers are averaged with the weights
        return cfg

    result = train_run(config(2), tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 2 * result.accounting["epochs"]  # every step
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    lora = [k for k in averaged if "lora_B" in k]
    assert lora and any(not torch.equal(averaged[k], current[k]) for k in lora)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    kept = load_file(tmp_path / "run" / "weights.safetensors")
    key = lora[0].removeprefix("model.")
    assert torch.equal(kept[key], best["state_dict"][lora[0]])  # the run keeps the best average
    resumed = train_run(config(3), tmp_path / "run", resume=True)
    assert resumed.accounting["epochs"] == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 6  # the average went on where it stopped
    with pytest.raises(ConfigError, match=r"train\.weight_averaging: 'ema' is not one of none, swa"):
        load_config(None, {"train.weight_averaging": "ema"})
    with pytest.raises(ConfigError, match=r"train\.threshold_tolerance: 1\.5 is not an F1 difference"):
        load_config(None, {"train.threshold_tolerance": 1.5})


def test_prior_fit_and_prior_trainable_reach_training(tiny_data: Path, tmp_path: Path) -> None:
    from floodlora.runs import load_run

    cfg = _config(tiny_data, limit_train_batches=2, lr=1e-2)
    cfg.model.decoder = "hires"
    cfg.model.pixel_prior = True
    cfg.model.prior_fit = "whole"
    cfg.model.prior_trainable = False
    result = train_run(cfg, tmp_path / "run", score=())
    prior = result.accounting["pixel_prior"]
    assert prior["fitted_on"] == "whole training chips" and prior["flood"]["fitted"] is True
    saved = load_run(tmp_path / "run").model.prior.weight
    # refitted the same way on the same chips: the weights training left are the fitted ones
    from floodlora.data.datamodule import FloodDataModule
    from floodlora.models.factory import build_segmentor
    from floodlora.training.pixel_prior import fit_pixel_prior

    fresh = build_segmentor(cfg.model, cfg.data.views, cfg.data.bands, cfg.data.crop_size)
    dm = FloodDataModule(cfg.data)
    fit_pixel_prior(fresh, dm.whole_chips("train"), seed=cfg.data.seed)
    torch.testing.assert_close(saved, fresh.prior.weight)
