"""Adaptation strategies for the encoder: frozen, LoRA (through peft) or full fine-tuning.

LoRA follows the reference method: adapters on every attention block's fused `to_qkv` and `to_out`
projections, rank r, alpha = 2r, dropout 0.1 (W' = W + (alpha / r) B A). The base weights are
frozen; only the adapters and the segmentation decoder train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from floodlora.config import STRATEGIES
from floodlora.errors import ConfigError
from floodlora.models.segmentor import FloodSegmentor

Strategy = Literal["frozen", "lora", "full"]
__all__ = ["STRATEGIES", "LoraSettings", "apply_strategy", "count_parameters", "is_peft", "merge_lora"]

#: Short names for groups of encoder Linear layers (module-name suffixes inside each block).
TARGET_ALIASES: dict[str, list[str]] = {
    "attention": ["to_qkv", "to_out"],
    "mlp": ["net.1", "net.3"],
    "all": ["to_qkv", "to_out", "net.1", "net.3"],
}


@dataclass
class LoraSettings:
    """The LoRA hyper-parameters; alpha defaults to 2 * rank as in the reference method."""

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.1
    targets: list[str] = field(default_factory=lambda: ["to_qkv", "to_out"])

    @property
    def resolved_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    def target_modules(self) -> list[str]:
        out: list[str] = []
        for t in self.targets:
            out += TARGET_ALIASES.get(t, [t])
        return list(dict.fromkeys(out))


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int
    encoder_trainable: int
    decoder: int

    def as_dict(self) -> dict[str, int]:
        return {
            "trainable": self.trainable,
            "total": self.total,
            "encoder_trainable": self.encoder_trainable,
            "decoder": self.decoder,
        }


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.resolved_alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules(),
        bias="none",
    )


def apply_strategy(model: FloodSegmentor, strategy: str, lora: LoraSettings | None = None) -> FloodSegmentor:
    """Prepare `model` in place for training with `strategy` and return it."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    model.strategy = strategy
    if strategy == "full":
        model.encoder.requires_grad_(True)
        return model
    model.encoder.requires_grad_(False)
    if strategy == "frozen":
        model.encoder.eval()
        return model
    from peft import get_peft_model

    settings = lora or LoraSettings()
    if settings.rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {settings.rank}")
    model.encoder = get_peft_model(model.clay_encoder, lora_config(settings))
    model.lora_settings = settings  # type: ignore[attr-defined]
    return model


def count_parameters(model: FloodSegmentor) -> ParameterCount:
    """Trainable and total parameters; shared tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    enc_trainable = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    decoder = sum(p.numel() for p in model.decoder_parameters())
    return ParameterCount(trainable, total, enc_trainable, decoder)


def lora_parameters_per_rank(encoder_dim: int, depth: int, inner: int, targets: Sequence[str]) -> int:
    """Analytic LoRA size per unit of rank: A is r x in, B is out x r for each targeted Linear."""
    shapes = {
        "to_qkv": (encoder_dim, 3 * inner),
        "to_out": (inner, encoder_dim),
        "net.1": (encoder_dim, 4 * encoder_dim),
        "net.3": (4 * encoder_dim, encoder_dim),
    }
    return depth * sum(shapes[t][0] + shapes[t][1] for t in targets)


def is_peft(module: nn.Module) -> bool:
    return hasattr(module, "merge_and_unload") and hasattr(module, "peft_config")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA adapters into the encoder weights in place; the encoder becomes a plain ClayEncoder.

    The segmentor's strategy becomes ``full``: every weight is now an ordinary tensor.
    """
    if not is_peft(model.encoder):
        raise ConfigError("this model has no LoRA adapters to merge (strategy is not lora)")
    model.encoder = model.encoder.merge_and_unload()
    model.strategy = "full"
    model.encoder.requires_grad_(False)
    return model
