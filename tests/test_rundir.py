"""Run directories: save/load round trip per strategy, base checkpoint verification."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from floodlora.config import RunConfig
from floodlora.errors import CheckpointError
from floodlora.models.clay import ClayEncoder, get_preset, save_encoder_safetensors
from floodlora.models.factory import build_segmentor
from floodlora.runs import WEIGHTS_FILE, load_run, save_run


def _config(strategy: str, checkpoint: str = "random:test-micro") -> RunConfig:
    cfg = RunConfig()
    cfg.model.checkpoint = checkpoint
    cfg.model.strategy = strategy
    cfg.model.lora_rank = 2
    return cfg


def _perturb(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("strategy", ["frozen", "lora", "full"])
def test_round_trip_reproduces_predictions(tmp_path: Path, strategy: str) -> None:
    cfg = _config(strategy)
    model = build_segmentor(cfg.model, ["pre", "post"], ["vv", "vh"])
    _perturb(model)
    model.eval()
    x = {v: torch.randn(1, 2, 32, 32) for v in ("pre", "post")}
    expected = model(x)
    save_run(tmp_path / "run", cfg, model)
    loaded = load_run(tmp_path / "run")
    assert loaded.base["strategy"] == strategy
    assert torch.allclose(loaded.model(x), expected, atol=1e-6)


def test_adapter_runs_store_no_base_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cfg = _config("lora")
    model = build_segmentor(cfg.model, ["pre", "post"], ["vv", "vh"])
    save_run(tmp_path / "run", cfg, model)
    keys = load_file(str(tmp_path / "run" / WEIGHTS_FILE)).keys()
    enc_keys = [k for k in keys if k.startswith("encoder.")]
    assert enc_keys and all("lora_" in k for k in enc_keys)


def test_base_checkpoint_mismatch_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_encoder_safetensors(ClayEncoder(get_preset("test-micro")), base)
    cfg = _config("lora", str(base))
    model = build_segmentor(cfg.model, ["post"], ["vv"])
    save_run(tmp_path / "run", cfg, model)
    other = tmp_path / "other.safetensors"
    save_encoder_safetensors(ClayEncoder(get_preset("test-micro")), other)
    with pytest.raises(CheckpointError, match="was trained on"):
        load_run(tmp_path / "run", checkpoint=str(other))
    assert load_run(tmp_path / "run").model.views == ("post",)


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a floodlora run directory"):
        load_run(tmp_path)


def test_loading_a_full_run_registers_no_encoder_preset(tmp_path: Path) -> None:
    """A full run rebuilds its encoder from the stored size without touching the global presets."""
    from floodlora.models.clay import PRESETS

    before = dict(PRESETS)
    from floodlora.config import ModelConfig
    from floodlora.models.factory import build_segmentor
    from floodlora.runs import load_run, save_run

    cfg = ModelConfig(checkpoint="random:test-micro", strategy="full")
    from floodlora.config import RunConfig

    config = RunConfig()
    config.model = cfg
    config.data.views = ["post"]
    model = build_segmentor(cfg, ["post"], ["vv", "vh"])
    save_run(tmp_path / "run", config, model)
    loaded = load_run(tmp_path / "run")
    assert dict(PRESETS) == before
    import torch

    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
