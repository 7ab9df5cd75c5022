"""Adaptation strategies for the encoder: frozen, LoRA (through peft) or full fine-tuning.

LoRA follows the reference method: adapters on every attention block's fused `to_qkv` and `to_out`
projections, rank r, alpha = 2r, dropout 0.1 (W' = W + (alpha / r) B A). The base weights are
frozen; only the adapters and the segmentation decoder train.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from floodlora.config import STRATEGIES
from floodlora.errors import CheckpointError, ConfigError
from floodlora.models.segmentor import FloodSegmentor

Strategy = Literal["frozen", "lora", "full"]
__all__ = [
    "REGISTRY",
    "STRATEGIES",
    "AdaptationStrategy",
    "FrozenStrategy",
    "FullStrategy",
    "LoraSettings",
    "LoraStrategy",
    "apply_strategy",
    "count_parameters",
    "get_strategy",
    "is_peft",
    "merge_lora",
    "strategy_of",
]

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

    def __post_init__(self) -> None:
        """A bad setting fails here, in one line, not as a peft traceback when the model is built."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0 (or None for 2 x rank), got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"LoRA targets must be a non-empty list of module names, got {self.targets!r}")

    def to_dict(self) -> dict[str, Any]:
        """What an adapter file records (alpha resolved)."""
        return {
            "rank": self.rank,
            "alpha": self.resolved_alpha,
            "dropout": self.dropout,
            "targets": list(self.targets),
        }

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


# --------------------------------------------------------------------------------------------------
# one object per strategy
# --------------------------------------------------------------------------------------------------

ENCODER_PREFIX = "encoder."


class AdaptationStrategy(ABC):
    """What one adaptation strategy trains, stores, keeps in checkpoints and expects when loading.

    Keys are the segmentor's own `state_dict` keys (no Lightning `model.` prefix) unless a method
    takes a `prefix`. A prepared segmentor carries its strategy as `model.adaptation` and its name as
    `model.strategy` (the string run directories and reports use).
    """

    name: ClassVar[str]
    #: A run stores only what it adds to its base checkpoint, so loading it needs (and verifies) the base.
    needs_base: ClassVar[bool] = True
    #: The encoder's output never changes while training (so it may be computed once and cached).
    constant_encoder: ClassVar[bool] = False
    #: The model holds separate adapters that `standalone` folds into the encoder weights.
    has_adapters: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash(type(self))

    @abstractmethod
    def _prepare_encoder(self, model: FloodSegmentor) -> None:
        """Set the encoder's trainable parameters (and wrap it, for adapters)."""

    def prepare(self, model: FloodSegmentor) -> FloodSegmentor:
        """Make `model` ready to train with this strategy, in place; returns it."""
        self._prepare_encoder(model)
        model.strategy = self.name
        model.adaptation = self  # type: ignore[attr-defined]
        return model

    def stores(self, key: str) -> bool:
        """Whether a run / checkpoint keeps the state_dict entry `key` (the decoder and head always)."""
        return not key.startswith(ENCODER_PREFIX)

    def trainable_state(self, model: FloodSegmentor) -> dict[str, torch.Tensor]:
        """The tensors a run's `weights.safetensors` holds: detached, contiguous, on the CPU."""
        return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if self.stores(k)}

    def checkpoint_filter(self, state: Mapping[str, Any], prefix: str = "model.") -> dict[str, Any]:
        """A Lightning checkpoint's `state_dict` without what the base checkpoint already holds.

        Entries outside `prefix` (not the segmentor's) are kept as they are.
        """
        return {k: v for k, v in state.items() if not k.startswith(prefix) or self.stores(k[len(prefix) :])}

    def missing_stored(self, missing: Sequence[str], prefix: str = "") -> list[str]:
        """The keys among `missing` that a run of this strategy must have stored."""
        return [k for k in missing if k.startswith(prefix) and self.stores(k[len(prefix) :])]

    def load_state(self, model: FloodSegmentor, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load stored tensors into a prepared `model`; anything missing or foreign is a CheckpointError."""
        try:
            result = model.load_state_dict(dict(state), strict=False)
        except RuntimeError as err:  # shape mismatches
            detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
            raise CheckpointError(f"{source}: weights do not fit this model ({detail})") from None
        if result.unexpected_keys:
            raise CheckpointError(
                f"{source}: weights do not fit this model: unexpected {', '.join(result.unexpected_keys[:4])}"
            )
        missing = self.missing_stored(result.missing_keys)
        if missing:
            raise CheckpointError(f"{source}: weights are missing {', '.join(missing[:4])}")

    def adapter_state(self, model: FloodSegmentor) -> dict[str, torch.Tensor]:
        """An adapter file's tensors: what this strategy adds to the base checkpoint."""
        if not self.needs_base:
            raise ConfigError(
                f"a {self.name} run changes every encoder weight, so it has no adapter; "
                "export it as a standalone model instead"
            )
        return self.trainable_state(model)

    def adapter_metadata(self) -> dict[str, Any] | None:
        """The settings an adapter file records for this strategy (None: nothing beyond its name)."""
        return None

    def standalone(self, model: FloodSegmentor) -> FloodSegmentor:
        """Make `model` a self-contained `full` model in place (adapters folded in); returns it."""
        model.strategy = FullStrategy.name
        model.adaptation = FullStrategy()  # type: ignore[attr-defined]
        return model


class FrozenStrategy(AdaptationStrategy):
    """The encoder stays as pretrained (and in eval mode); only the decoder trains."""

    name = "frozen"
    constant_encoder = True

    def _prepare_encoder(self, model: FloodSegmentor) -> None:
        model.encoder.requires_grad_(False)
        model.encoder.eval()


class LoraStrategy(AdaptationStrategy):
    """Low-rank adapters (peft) on the chosen encoder Linear layers; base weights frozen."""

    name = "lora"
    has_adapters = True

    def __init__(self, settings: LoraSettings | None = None) -> None:
        if settings is not None and not isinstance(settings, LoraSettings):
            raise ConfigError(f"LoRA settings must be LoraSettings, got {type(settings).__name__}")
        self.settings = settings or LoraSettings()

    def __repr__(self) -> str:
        return f"LoraStrategy({self.settings!r})"

    def _prepare_encoder(self, model: FloodSegmentor) -> None:
        from peft import get_peft_model

        model.encoder.requires_grad_(False)
        model.encoder = get_peft_model(model.clay_encoder, lora_config(self.settings))
        model.lora_settings = self.settings  # type: ignore[attr-defined]

    def stores(self, key: str) -> bool:
        return not key.startswith(ENCODER_PREFIX) or "lora_" in key

    def adapter_metadata(self) -> dict[str, Any] | None:
        return self.settings.to_dict()

    def standalone(self, model: FloodSegmentor) -> FloodSegmentor:
        if is_peft(model.encoder):
            model.encoder = model.encoder.merge_and_unload()
            model.encoder.requires_grad_(False)
        return super().standalone(model)


class FullStrategy(AdaptationStrategy):
    """Every weight trains, so a run stores every tensor and loads without the base checkpoint."""

    name = "full"
    needs_base = False

    def _prepare_encoder(self, model: FloodSegmentor) -> None:
        model.encoder.requires_grad_(True)

    def stores(self, key: str) -> bool:
        return True


#: name -> strategy class, in the order of `floodlora.config.STRATEGIES`.
REGISTRY: dict[str, type[AdaptationStrategy]] = {
    cls.name: cls for cls in (FrozenStrategy, LoraStrategy, FullStrategy)
}


def strategy_class(name: str) -> type[AdaptationStrategy]:
    """The class registered under `name`; an unknown name is a one-line ConfigError."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(REGISTRY)}") from None


def get_strategy(name: str, lora: LoraSettings | None = None) -> AdaptationStrategy:
    """The strategy object for `name`; `lora` is used by `lora` only (other strategies ignore it)."""
    cls = strategy_class(name)
    return LoraStrategy(lora) if cls is LoraStrategy else cls()


def strategy_of(model: nn.Module) -> AdaptationStrategy:
    """The strategy a segmentor was prepared with (rebuilt from `model.strategy` when not recorded)."""
    found = getattr(model, "adaptation", None)
    name = getattr(model, "strategy", FullStrategy.name)
    if isinstance(found, AdaptationStrategy) and found.name == name:
        return found
    return get_strategy(name, lora=getattr(model, "lora_settings", None))


def apply_strategy(model: FloodSegmentor, strategy: str, lora: LoraSettings | None = None) -> FloodSegmentor:
    """Prepare `model` in place for training with `strategy` and return it (`get_strategy(...).prepare`)."""
    return get_strategy(strategy, lora=lora).prepare(model)


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


def is_peft(module: nn.Module) -> bool:
    return hasattr(module, "merge_and_unload") and hasattr(module, "peft_config")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA adapters into the encoder weights in place; the encoder becomes a plain ClayEncoder.

    The segmentor's strategy becomes ``full``: every weight is now an ordinary tensor.
    """
    if not is_peft(model.encoder):
        raise ConfigError("this model has no LoRA adapters to merge (strategy is not lora)")
    return strategy_of(model).standalone(model)
