"""Export: merged == unmerged, standalone loading, adapter round trip, torch.export / ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from tests.inference_helpers import db_scene, make_run, write_scene

from floodlora.errors import CheckpointError, ConfigError
from floodlora.inference.export import export_run, max_prediction_difference
from floodlora.inference.predict import PredictOptions, predict_run
from floodlora.models.strategies import is_peft, merge_lora
from floodlora.runs import load_adapter, load_run, read_adapter_metadata


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def _inputs(size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {v: torch.randn(2, 2, size, size, generator=g) for v in ("pre", "post")}


def test_merge_lora_matches_unmerged(run_dir: Path) -> None:
    model = load_run(run_dir).model
    ref = load_run(run_dir).model
    merged = merge_lora(model)
    assert not is_peft(merged.encoder) and merged.strategy == "full"
    assert max_prediction_difference(ref, merged, size=32) <= 1e-5
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        merge_lora(merged)


def test_export_merge_writes_standalone_model(run_dir: Path, tmp_path: Path) -> None:
    rep = export_run(run_dir, tmp_path / "merged", merge=True)
    assert rep.merge_max_abs_diff is not None and rep.merge_max_abs_diff <= 1e-5
    standalone = load_run(tmp_path / "merged")  # no base checkpoint needed: strategy full
    assert standalone.base["strategy"] == "full" and not is_peft(standalone.model.encoder)
    x = _inputs()
    with torch.no_grad():
        expected = load_run(run_dir).model(x)
        got = standalone.model(x)
    assert (got - expected).abs().max() <= 1e-5
    # the whole-scene path gives the same map from the merged directory
    views = {"post": write_scene(tmp_path / "post.tif", db_scene(48, 56))}
    opts = PredictOptions(cog=False)
    predict_run(run_dir, views, tmp_path / "a.tif", probabilities=tmp_path / "pa.tif", options=opts)
    predict_run(
        tmp_path / "merged", views, tmp_path / "b.tif", probabilities=tmp_path / "pb.tif", options=opts
    )
    with rasterio.open(tmp_path / "pa.tif") as a, rasterio.open(tmp_path / "pb.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)


def test_adapter_round_trip_and_predict(run_dir: Path, tmp_path: Path) -> None:
    rep = export_run(run_dir, tmp_path / "adapters", adapter="valencia")
    path = tmp_path / "adapters" / "valencia.safetensors"
    assert rep.written == [path]
    meta = read_adapter_metadata(path)
    assert meta["name"] == "valencia" and meta["base_checkpoint"] == "random:test-micro"
    from safetensors.torch import load_file

    keys = load_file(str(path)).keys()
    assert all("lora_" in k for k in keys if k.startswith("encoder."))
    loaded = load_adapter(path)
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), load_run(run_dir).model(x), atol=1e-6)
    # --adapter picks it at predict time, by path or by name under RUN_DIR/adapters/
    views = {"post": write_scene(tmp_path / "post.tif", db_scene(40, 40))}
    opts = PredictOptions(cog=False)
    predict_run(run_dir, views, tmp_path / "a.tif", probabilities=tmp_path / "pa.tif", options=opts)
    predict_run(
        run_dir, views, tmp_path / "b.tif", probabilities=tmp_path / "pb.tif", adapter=str(path), options=opts
    )
    with rasterio.open(tmp_path / "pa.tif") as a, rasterio.open(tmp_path / "pb.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)
    with pytest.raises(ConfigError, match="no such file"):
        predict_run(run_dir, views, tmp_path / "c.tif", adapter="missing", options=opts)


def test_adapter_refuses_another_base(tmp_path: Path) -> None:
    from floodlora.config import RunConfig
    from floodlora.models.clay import ClayEncoder, get_preset, save_encoder_safetensors
    from floodlora.models.factory import build_segmentor
    from floodlora.runs import save_run

    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_encoder_safetensors(ClayEncoder(get_preset("test-micro")), base)
    cfg = RunConfig()
    cfg.model.checkpoint = str(base)
    cfg.model.lora_rank = 2
    save_run(tmp_path / "run", cfg, build_segmentor(cfg.model, ["post"], ["vv", "vh"]))
    export_run(tmp_path / "run", tmp_path / "ad", adapter="a")
    other = tmp_path / "other.safetensors"
    save_encoder_safetensors(ClayEncoder(get_preset("test-micro")), other)
    with pytest.raises(CheckpointError, match="was trained on base"):
        load_adapter(tmp_path / "ad" / "a.safetensors", checkpoint=str(other))
    with pytest.raises(CheckpointError, match="not a floodlora adapter"):
        load_adapter(base)


def test_torch_export_and_onnx_match_pytorch(run_dir: Path, tmp_path: Path) -> None:
    rep = export_run(run_dir, tmp_path / "exp", torch_export=True, onnx=True, tile=32)
    assert (tmp_path / "exp" / "model.pt2").is_file() and (tmp_path / "exp" / "model.onnx").is_file()
    assert rep.torch_export_max_abs_diff is not None and rep.torch_export_max_abs_diff < 1e-4
    pytest.importorskip("onnxruntime")
    assert rep.onnx_max_abs_diff is not None and rep.onnx_max_abs_diff < 1e-4
    program = torch.export.load(str(tmp_path / "exp" / "model.pt2"))
    x = _inputs()
    with torch.no_grad():
        expected = load_run(run_dir).model(
            {k: v[:1] for k, v in x.items()}, torch.zeros(1, 4), torch.zeros(1, 4)
        )
        got = program.module()(x["pre"][:1], x["post"][:1], torch.zeros(1, 4), torch.zeros(1, 4))
    assert (got - expected).abs().max() < 1e-5


def test_export_needs_something_to_do(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to export"):
        export_run(run_dir, tmp_path / "x")


def test_cli_export_adapter(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from floodlora import cli

    result = CliRunner().invoke(cli.app, ["export", str(run_dir), "--adapter", "ev1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ev1.safetensors").is_file() and "wrote" in result.output
