"""`precision: auto` per machine, --precision overrides, and what CPU bf16 autocast keeps in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from tests.inference_helpers import db_scene, make_run, write_scene

from floodlora import precision as prec
from floodlora.config import TrainConfig
from floodlora.errors import ConfigError
from floodlora.inference.predict import PredictOptions, predict_run
from floodlora.metrics import FloodConfusion
from floodlora.models.clay import ClayEncoder, band_wavelengths, get_preset
from floodlora.training.engine import precision_choice
from floodlora.training.losses import bce_dice_loss


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", "auto"),
        ("32", "32-true"),
        ("bf16", "bf16-mixed"),
        ("BF16-mixed", "bf16-mixed"),
        (32, "32-true"),
    ],
)
def test_precision_names(given: str | int, expected: str) -> None:
    assert prec.normalize_precision(given) == expected


def test_unknown_precision_is_a_user_error() -> None:
    with pytest.raises(ConfigError, match="choose auto, 32"):
        prec.normalize_precision("fp8")


@pytest.fixture()
def detect(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FLOODLORA_CPU_BF16 override: `auto` asks the (patched) CPU detection."""
    monkeypatch.delenv(prec.ENV_CPU_BF16, raising=False)
    return monkeypatch


def test_cpu_without_bf16_stays_fp32_without_probing(detect: pytest.MonkeyPatch) -> None:
    prec.cpu_bf16_fast.cache_clear()
    detect.setattr(prec, "cpu_bf16_flags", lambda: [])
    detect.setattr(prec, "_matmul_rate", lambda *a, **k: pytest.fail("probed a CPU without bf16"))
    try:
        for purpose in ("train", "predict"):
            choice = prec.resolve_precision("auto", "cpu", purpose)
            assert choice.precision == "32-true" and "without avx512_bf16" in choice.reason
    finally:
        prec.cpu_bf16_fast.cache_clear()


@pytest.mark.parametrize(("bf16_rate", "fast"), [(300e9, True), (110e9, False)])
def test_probe_decides_on_the_measured_ratio(
    detect: pytest.MonkeyPatch, bf16_rate: float, fast: bool
) -> None:
    prec.cpu_bf16_fast.cache_clear()
    detect.setattr(prec, "cpu_bf16_flags", lambda: ["amx_bf16"])
    detect.setattr(
        prec, "_matmul_rate", lambda dtype, *a, **k: bf16_rate if dtype == torch.bfloat16 else 100e9
    )
    try:
        assert prec.cpu_bf16_fast()[0] is fast
        predict = prec.resolve_precision("auto", "cpu", "predict")
        assert predict.precision == ("bf16-mixed" if fast else "32-true")
        assert "amx_bf16" in predict.reason and f"{bf16_rate / 100e9:.1f}x" in predict.reason
        detect.setattr(prec, "CPU_BF16_AUTO_TRAIN", False)
        train = prec.resolve_precision("auto", "cpu", "train")
        assert train.precision == "32-true"
        assert ("training stays fp32" in train.reason) is fast
        detect.setattr(prec, "CPU_BF16_AUTO_TRAIN", True)
        assert prec.resolve_precision("auto", "cpu", "train").precision == predict.precision
    finally:
        prec.cpu_bf16_fast.cache_clear()


def test_real_probe_is_quick_and_consistent(detect: pytest.MonkeyPatch) -> None:
    """Whatever this CPU is, the probe answers with a reason, and only probes with bf16 instructions."""
    prec.cpu_bf16_fast.cache_clear()
    fast, reason = prec.cpu_bf16_fast()
    prec.cpu_bf16_fast.cache_clear()
    if not prec.cpu_bf16_flags():
        assert not fast and "without" in reason
    else:
        assert "matmul probe" in reason and ("x needed" in reason) is (not fast)


def test_env_override_and_explicit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(prec.ENV_CPU_BF16, "1")
    assert prec.resolve_precision("auto", "cpu").precision == "bf16-mixed"
    monkeypatch.setenv(prec.ENV_CPU_BF16, "0")
    assert prec.resolve_precision("auto", "cpu", "predict").precision == "32-true"
    assert prec.resolve_precision("bf16", "cpu").to_dict() == {
        "precision": "bf16-mixed", "requested": "bf16-mixed", "reason": "set explicitly",
    }  # fmt: skip
    assert precision_choice(TrainConfig(precision="32"), "cpu").precision == "32-true"


# --------------------------------------------------------------------------------------------------
# numerics under CPU autocast
# --------------------------------------------------------------------------------------------------


def _encoder() -> ClayEncoder:
    torch.manual_seed(0)
    return ClayEncoder(get_preset("test-micro")).eval()


def test_clay_residual_stream_stays_fp32_under_cpu_autocast() -> None:
    """As in Clay: fp32 encodings promote the bf16 patch tokens, so block inputs (the residual
    stream), LayerNorm outputs and the encoder output are fp32; the matmuls run in bf16."""
    enc = _encoder()
    seen: dict[str, tuple[torch.dtype, torch.dtype]] = {}

    def hook(name: str):
        def record(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[name] = (args[0].dtype, out.dtype)

        return record

    for i, (attn, ff) in enumerate(enc.transformer.layers):  # type: ignore[misc]
        attn.register_forward_hook(hook(f"attn{i}"))
        attn.norm.register_forward_hook(hook(f"attn{i}.norm"))
        attn.to_qkv.register_forward_hook(hook(f"attn{i}.qkv"))
        ff.register_forward_hook(hook(f"ff{i}"))
    x = torch.randn(2, 2, 32, 32)
    waves = band_wavelengths(["vv", "vh"])
    with torch.no_grad():
        ref = enc(x, waves=waves)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(x, waves=waves)
    assert out.dtype == torch.float32
    for i in range(len(enc.transformer.layers)):
        assert seen[f"attn{i}"][0] == torch.float32, f"block {i} input (residual stream) is not fp32"
        assert seen[f"ff{i}"][0] == torch.float32
        assert seen[f"attn{i}.norm"][1] == torch.float32
        assert seen[f"attn{i}.qkv"][1] == torch.bfloat16, "autocast should run the matmuls in bf16"
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05


def test_loss_and_metrics_are_fp32_from_bf16_logits() -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 1, 16, 16, generator=g) * 3).to(torch.bfloat16).requires_grad_()
    mask = torch.randint(0, 2, (2, 16, 16), generator=g, dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = bce_dice_loss(logits, mask)
    assert loss.dtype == parts["bce"].dtype == torch.float32
    ref, _ = bce_dice_loss(logits.detach().float(), mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()
    scores = []
    for enabled in (True, False):  # the task scores sigmoid(logits.float()), inside autocast or not
        metric = FloodConfusion()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            metric.update(torch.sigmoid(logits.detach().float()), mask)
            scores.append(metric.compute())
    assert scores[0]["f1"].dtype == torch.float32
    assert all(scores[0][k].item() == scores[1][k].item() for k in scores[0])


# --------------------------------------------------------------------------------------------------
# predict / CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def test_predict_bf16_mask_agrees_with_fp32(run_dir: Path, tmp_path: Path) -> None:
    views = {
        "pre": write_scene(tmp_path / "pre.tif", db_scene(70, 70, seed=1) + 3.0),
        "post": write_scene(tmp_path / "post.tif", db_scene(70, 70, seed=2)),
    }
    masks = {}
    for name in ("32", "bf16"):
        res = predict_run(run_dir, views, tmp_path / f"m{name}.tif", options=PredictOptions(precision=name))
        assert res.precision["precision"] == prec.normalize_precision(name)
        with rasterio.open(res.out) as ds:
            masks[name] = ds.read(1)
    assert any("bf16-mixed" in m for m in res.messages)
    differ = float(np.mean(masks["32"] != masks["bf16"]))
    assert differ < 0.05, differ


def test_cli_precision_flags(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad --precision is one line and exit code 2, on predict, evaluate and train."""
    from floodlora import cli

    post = str(write_scene(tmp_path / "post.tif", db_scene(40, 40, seed=2)))
    for argv in (
        [
            "predict",
            str(run_dir),
            "--view",
            f"post={post}",
            "--out",
            str(tmp_path / "m.tif"),
            "--precision",
            "fp8",
        ],
        ["evaluate", str(run_dir), "--precision", "fp8"],
        ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path), "--precision", "fp8"],
    ):
        monkeypatch.setattr("sys.argv", ["floodlora", *argv])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "choose auto, 32" in err and "Traceback" not in err, argv
    assert not (tmp_path / "m.tif").exists() and not (tmp_path / "r").exists()


def test_accounting_records_precision(tmp_path: Path) -> None:
    """A tiny training run writes the choice and its reason to accounting.json and the log."""
    from floodlora.config import RunConfig
    from floodlora.data.synthetic import write_folder_dataset
    from floodlora.training.engine import train_run

    data = tmp_path / "chips"
    write_folder_dataset(data, 8, 32, views=["pre", "post"])
    cfg = RunConfig()
    cfg.data.roots, cfg.data.crop_size, cfg.data.batch_size = [str(data)], 32, 2
    cfg.model.checkpoint, cfg.model.strategy, cfg.model.lora_rank = "random:test-micro", "lora", 2
    cfg.train.max_epochs, cfg.train.limit_train_batches, cfg.train.limit_val_batches = 1, 1, 1
    cfg.train.precision = "bf16-mixed"
    lines: list[str] = []
    result = train_run(cfg, tmp_path / "run", log=lines.append)
    acc = json.loads((tmp_path / "run" / "accounting.json").read_text())
    assert acc["precision"] == {
        "precision": "bf16-mixed",
        "requested": "bf16-mixed",
        "reason": "set explicitly",
    }
    assert result.accounting["precision"] == acc["precision"]
    assert lines[0].startswith("precision: bf16-mixed")
    assert np.isfinite(result.metrics["val"]["f1"])
    # evaluate scores in the run's own precision unless told otherwise
    from floodlora.training.engine import evaluate_run

    own = evaluate_run(tmp_path / "run", split="val")
    assert own["numeric_precision"]["precision"] == "bf16-mixed"
    fp32 = evaluate_run(tmp_path / "run", split="val", precision="32-true")
    assert fp32["numeric_precision"] == {
        "precision": "32-true",
        "requested": "32-true",
        "reason": "set explicitly",
    }
    assert abs(own["f1"] - fp32["f1"]) < 0.05
