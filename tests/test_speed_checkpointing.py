"""Activation checkpointing at the segmentor level, its default, `precision: auto`, compile."""

from __future__ import annotations

import pytest
import torch

from floodlora.config import ModelConfig, TrainConfig
from floodlora.models.factory import build_segmentor, compile_encoder
from floodlora.training.engine import resolve_precision
from floodlora.training.losses import bce_dice_loss

VIEWS = ["pre_asc", "post_asc"]
BANDS = ["vv", "vh"]


def _loss_and_grads(strategy: str, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's loss and gradients; seeded so that LoRA dropout draws the same masks."""
    cfg = ModelConfig(
        checkpoint="random:test-micro", strategy=strategy, lora_rank=4, gradient_checkpointing=checkpointing
    )
    torch.manual_seed(0)  # the decoder's initialisation
    model = build_segmentor(cfg, VIEWS, BANDS, crop_size=32).train()
    gen = torch.Generator().manual_seed(1)
    views = {v: torch.randn(2, 2, 32, 32, generator=gen) for v in VIEWS}
    mask = torch.randint(0, 2, (2, 32, 32), generator=gen, dtype=torch.uint8)
    mask[:, :4] = 255  # some nodata too
    torch.manual_seed(123)
    loss, _ = bce_dice_loss(model(views, torch.randn(2, 4, generator=gen)), mask)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert model.clay_encoder.gradient_checkpointing is checkpointing
    return loss.detach(), grads


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_segmentor_checkpointing_same_loss_and_gradients(strategy: str) -> None:
    loss_a, grads_a = _loss_and_grads(strategy, False)
    loss_b, grads_b = _loss_and_grads(strategy, True)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    encoder_grads = [n for n in grads_a if n.startswith("encoder.")]
    assert encoder_grads, "the encoder must receive gradients"
    assert any(grads_a[n].abs().sum() > 0 for n in encoder_grads)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize(
    ("strategy", "size", "setting", "expected"),
    [
        ("full", 512, None, True),  # the paper's out-of-memory case: on by default
        ("full", 256, None, False),
        ("lora", 512, None, False),
        ("frozen", 512, None, False),
        ("lora", 128, True, True),  # an explicit setting wins
        ("full", 512, False, False),
    ],
)
def test_checkpointing_default(strategy: str, size: int, setting: bool | None, expected: bool) -> None:
    cfg = ModelConfig(checkpoint="random:test-micro", strategy=strategy, gradient_checkpointing=setting)
    model = build_segmentor(cfg, VIEWS, BANDS, crop_size=size)
    assert model.clay_encoder.gradient_checkpointing is expected


def test_precision_auto_on_cuda_and_plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA: bf16 (fp16 before Ampere). A CPU without bf16 instructions: fp32, and a warning for an
    explicit bf16 (tests/test_precision.py covers CPUs with bf16)."""
    import floodlora.precision as prec

    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    auto = TrainConfig(precision="auto")
    assert resolve_precision(auto, "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(auto, "gpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(auto, "gpu") == "16-mixed"  # pre-Ampere GPUs
    with pytest.warns(UserWarning, match="bf16 on a CPU without"):
        assert resolve_precision(TrainConfig(precision="bf16-mixed"), "cpu") == "bf16-mixed"


def test_compile_keeps_parameter_names() -> None:
    """`train.compile` compiles in place: saved weights and run directories keep their keys."""
    cfg = ModelConfig(checkpoint="random:test-micro", strategy="lora", lora_rank=2)
    model = build_segmentor(cfg, VIEWS, BANDS, crop_size=32)
    before = list(model.state_dict())
    compile_encoder(model)
    assert list(model.state_dict()) == before
    assert model.clay_encoder.transformer._compiled_call_impl is not None
