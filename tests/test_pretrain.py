"""MAE pretraining: masking, reconstruction loss decreasing, resumable output files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.models.clay import ClayEncoder, get_preset, load_clay_encoder
from floodlora.training.pretrain import ClayMAE, ImagePool, PretrainConfig, pretrain, reconstruction_loss


def _structured_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random fields (learnable structure, unlike white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        fx, fy, phase = rng.uniform(1, 3, 3)
        vv = np.sin(2 * np.pi * (fx * xx + phase)) + np.cos(2 * np.pi * fy * yy)
        out.append(np.stack([vv, 0.5 * vv + 0.2]).astype(np.float32))
    return np.stack(out)


def test_mask_ratio_and_shapes() -> None:
    torch.manual_seed(0)
    mae = ClayMAE(ClayEncoder(get_preset("test-micro")), decoder_dim=32, decoder_depth=1, mask_ratio=0.75)
    x = torch.from_numpy(_structured_images(3))
    loss, pred, mask = mae(x, ("vv", "vh"))
    assert pred.shape == (3, 16, 2, 64)
    assert mask.shape == (3, 16)
    assert torch.all(mask.sum(1) == 12)  # 75% of 16 patches masked
    assert torch.isfinite(loss)


def test_few_steps_lower_reconstruction_loss_on_fixed_batch() -> None:
    torch.manual_seed(0)
    mae = ClayMAE(ClayEncoder(get_preset("test-micro")), decoder_dim=32, decoder_depth=1)
    x = torch.from_numpy(_structured_images(8))
    before = reconstruction_loss(mae, x, ("vv", "vh"), seed=3)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    mae.train()
    for _ in range(40):
        loss, _, _ = mae(x, ("vv", "vh"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = reconstruction_loss(mae, x, ("vv", "vh"), seed=3)
    assert after < 0.8 * before, (before, after)


def test_pretrain_writes_loadable_encoder_and_resumes(tmp_path: Path) -> None:
    pool = ImagePool()
    for img in _structured_images(16, size=32):
        pool.add(("vv", "vh"), img)
    for img in _structured_images(8, size=32, seed=1):
        pool.add(("vv",), img[:1])
    cfg = PretrainConfig(
        preset="test-micro",
        crop_size=16,
        steps=6,
        batch_size=4,
        decoder_dim=32,
        decoder_depth=1,
        warmup_steps=2,
        log_every=2,
        checkpoint_every=3,
    )
    summary = pretrain(cfg, tmp_path, pool=pool)
    assert summary["steps"] == 6
    for name in (
        "encoder.safetensors",
        "loss_curve.csv",
        "loss_curve.png",
        "pretrain.json",
        "pretrain_state.pt",
    ):
        assert (tmp_path / name).is_file(), name
    assert len((tmp_path / "loss_curve.csv").read_text().strip().splitlines()) == 1 + 3
    encoder = load_clay_encoder(tmp_path / "encoder.safetensors")
    assert encoder.config == get_preset("test-micro")
    # Resuming with more steps continues from step 6 rather than starting over.
    cfg.steps = 8
    pretrain(cfg, tmp_path, pool=pool)
    rows = (tmp_path / "loss_curve.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [2, 4, 6, 8]
    assert json.loads((tmp_path / "pretrain.json").read_text())["steps"] == 8


def test_invalid_mask_ratio() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        ClayMAE(ClayEncoder(get_preset("test-micro")), mask_ratio=1.0)
