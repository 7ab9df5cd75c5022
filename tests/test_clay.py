"""The Clay-compatible encoder: numerical equality with Clay's own output, keys, loader errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from floodlora.errors import CheckpointError
from floodlora.models.clay import (
    PRESETS,
    ClayEncoder,
    get_preset,
    load_clay_encoder,
    save_encoder_safetensors,
)


def _fixture_io(clay_fixtures: Path) -> dict:
    return torch.load(clay_fixtures / "clay_tiny_io.pt", weights_only=True)


def test_fixture_output_matches_clay(clay_fixtures: Path) -> None:
    encoder = load_clay_encoder(clay_fixtures / "clay_tiny.ckpt").eval()
    io = _fixture_io(clay_fixtures)
    with torch.no_grad():
        out = encoder(io["pixels"], io["time"], io["latlon"], io["gsd"], io["waves"])
    assert out.shape == io["expected_tokens"].shape == (2, 17, 64)
    assert torch.allclose(out, io["expected_tokens"], atol=1e-5, rtol=0)


def test_loader_infers_size_and_drops_non_encoder_keys(clay_fixtures: Path) -> None:
    encoder = load_clay_encoder(clay_fixtures / "clay_tiny.ckpt")
    cfg = encoder.config
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim, cfg.patch_size) == (
        64,
        2,
        4,
        16,
        128,
        8,
    )
    keys = set(encoder.state_dict())
    assert not any(k.startswith(("decoder", "teacher", "proj", "model.")) for k in keys)


@pytest.mark.parametrize(("size", "preset"), [("base", "clay-v1-base"), ("large", "clay-v1.5-large")])
def test_released_key_and_shape_tables(clay_fixtures: Path, size: str, preset: str) -> None:
    table = json.loads((clay_fixtures / "clay_encoder_keys.json").read_text())
    with torch.device("meta"):
        encoder = ClayEncoder(get_preset(preset))
    ours = {k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert ours == table[size]
    assert sum(p.numel() for p in encoder.parameters()) == table[f"{size}_params"]


def test_safetensors_round_trip(tmp_path: Path, clay_fixtures: Path) -> None:
    encoder = load_clay_encoder(clay_fixtures / "clay_tiny.ckpt").eval()
    path = tmp_path / "enc.safetensors"
    save_encoder_safetensors(encoder, path)
    again = load_clay_encoder(path).eval()
    io = _fixture_io(clay_fixtures)
    with torch.no_grad():
        out = again(io["pixels"], io["time"], io["latlon"], io["gsd"], io["waves"])
    assert torch.allclose(out, io["expected_tokens"], atol=1e-5)


def test_truncated_checkpoint_gives_clear_error(tmp_path: Path, clay_fixtures: Path) -> None:
    src = (clay_fixtures / "clay_tiny.ckpt").read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: .*(truncated|corrupt|cannot read)"):
        load_clay_encoder(bad)


def test_legacy_pickle_checkpoint_loads(tmp_path: Path, clay_fixtures: Path) -> None:
    """Files written with the pre-1.6 (non-zip) format cannot be memory-mapped; they load whole."""
    ckpt = torch.load(clay_fixtures / "clay_tiny.ckpt", weights_only=True)
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:2] != b"PK"
    encoder = load_clay_encoder(legacy).eval()
    io = _fixture_io(clay_fixtures)
    with torch.no_grad():
        out = encoder(io["pixels"], io["time"], io["latlon"], io["gsd"], io["waves"])
    assert torch.allclose(out, io["expected_tokens"], atol=1e-5)


def test_truncated_legacy_checkpoint_gives_clear_error(tmp_path: Path, clay_fixtures: Path) -> None:
    legacy = tmp_path / "legacy.ckpt"
    torch.save(torch.load(clay_fixtures / "clay_tiny.ckpt", weights_only=True), legacy,
               _use_new_zipfile_serialization=False)  # fmt: skip
    data = legacy.read_bytes()
    legacy.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"legacy\.ckpt: cannot read checkpoint"):
        load_clay_encoder(legacy)


def test_non_clay_checkpoint_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"model.backbone.conv1.weight": torch.zeros(4, 3, 3, 3)}}, path)
    with pytest.raises(CheckpointError, match=r"resnet\.ckpt: not a Clay encoder checkpoint"):
        load_clay_encoder(path)


def test_missing_key_is_named(tmp_path: Path, clay_fixtures: Path) -> None:
    ckpt = torch.load(clay_fixtures / "clay_tiny.ckpt", weights_only=True)
    del ckpt["state_dict"]["model.encoder.transformer.layers.1.0.to_out.weight"]
    path = tmp_path / "missing.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(
        CheckpointError, match=r"missing 1 key\(s\): transformer\.layers\.1\.0\.to_out\.weight"
    ):
        load_clay_encoder(path)


def test_unexpected_key_is_named(tmp_path: Path, clay_fixtures: Path) -> None:
    ckpt = torch.load(clay_fixtures / "clay_tiny.ckpt", weights_only=True)
    ckpt["state_dict"]["model.encoder.pos_embed"] = torch.zeros(1, 17, 64)
    path = tmp_path / "extra.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"unexpected 1 key\(s\): pos_embed"):
        load_clay_encoder(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_clay_encoder(tmp_path / "nope.ckpt")


def test_copied_checkpoint_loads_from_any_path(tmp_path: Path, clay_fixtures: Path) -> None:
    dst = tmp_path / "copy.ckpt"
    shutil.copy(clay_fixtures / "clay_tiny.ckpt", dst)
    assert load_clay_encoder(dst).config.dim == 64


@pytest.mark.parametrize("shape", [(1, 2, 32, 48), (1, 2, 36, 36)])
def test_bad_input_shapes_rejected(shape: tuple[int, ...]) -> None:
    encoder = ClayEncoder(get_preset("test-micro"))
    with pytest.raises(ValueError, match=r"square|multiple of the patch size"):
        encoder(torch.zeros(shape), waves=torch.tensor([3.5, 4.0]))


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if PRESETS[n].dim <= 384))
def test_every_small_preset_runs_forward_backward(name: str) -> None:
    """timm-style generic test: every registered preset must build, run and backpropagate."""
    torch.manual_seed(0)
    cfg = get_preset(name)
    encoder = ClayEncoder(cfg)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = encoder(x, waves=torch.tensor([3.5]))
    assert out.shape == (2, 1 + 4, cfg.dim)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_gradient_checkpointing_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    encoder = ClayEncoder(get_preset("test-micro"))
    x = torch.randn(2, 2, 32, 32)
    waves = torch.tensor([3.5, 4.0])

    def grads(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder.zero_grad()
        encoder.gradient_checkpointing = checkpointing
        loss = encoder(x, waves=waves).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in encoder.parameters()]

    loss_a, g_a = grads(False)
    loss_b, g_b = grads(True)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_a, g_b, strict=True))
