"""Build a ready-to-train segmentor from a ModelConfig: encoder + decoder + adaptation strategy."""

from __future__ import annotations

from collections.abc import Sequence

from floodlora.config import ModelConfig
from floodlora.models.clay import ClayEncoder
from floodlora.models.registry import checkpoint_latlon_order, load_encoder
from floodlora.models.segmentor import FloodSegmentor
from floodlora.models.strategies import AdaptationStrategy, LoraSettings, get_strategy, strategy_class


def lora_settings(cfg: ModelConfig) -> LoraSettings:
    return LoraSettings(
        rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets
    )


def strategy_for(cfg: ModelConfig) -> AdaptationStrategy:
    """`cfg.strategy` as a strategy object (LoRA settings read only for `lora`)."""
    lora = lora_settings(cfg) if strategy_class(cfg.strategy).has_adapters else None
    return get_strategy(cfg.strategy, lora=lora)


def resolve_latlon_order(cfg: ModelConfig) -> str:
    """`model.latlon_order`, with auto resolved from the checkpoint (a run stores the result)."""
    return checkpoint_latlon_order(cfg.checkpoint) if cfg.latlon_order == "auto" else cfg.latlon_order


def build_segmentor(
    cfg: ModelConfig,
    views: Sequence[str],
    bands: Sequence[str],
    crop_size: int | None = None,
    encoder: ClayEncoder | None = None,
) -> FloodSegmentor:
    """Load the encoder named by `cfg.checkpoint` (or take `encoder`), add the decoder and apply
    `cfg.strategy`.

    Activation checkpointing follows `cfg.gradient_checkpointing`; when unset it is switched on for
    full fine-tuning at 512 px and above, where activations dominate memory.
    """
    strategy = strategy_for(cfg)  # a bad strategy or LoRA setting fails before the encoder is read
    if encoder is None:
        encoder = load_encoder(cfg.checkpoint)
    model = FloodSegmentor(
        encoder,
        views=views,
        bands=bands,
        decoder_channels=cfg.decoder_channels,
        share_decoder=cfg.share_decoder,
        view_dropout=cfg.view_dropout,
        pixel_dropout=cfg.pixel_dropout,
        decoder=cfg.decoder,
        outputs=cfg.outputs,
        pixel_prior=cfg.pixel_prior,
        prior_features=cfg.prior_features,
    )
    checkpointing = cfg.gradient_checkpointing
    if checkpointing is None:
        checkpointing = not strategy.needs_base and (crop_size or 0) >= 512  # every base weight trains
    model.clay_encoder.gradient_checkpointing = bool(checkpointing)
    model.latlon_order = resolve_latlon_order(cfg)
    model = strategy.prepare(model)
    if model.prior is not None and not cfg.prior_trainable:
        model.prior.requires_grad_(False)
    return model


def compile_encoder(model: FloodSegmentor) -> FloodSegmentor:
    """`train.compile`: compile the encoder's transformer in place with torch.compile.

    In place (`nn.Module.compile`), so parameter names and saved weights are unchanged; the
    decoder stays eager (its convolutions gain nothing). Pays a one-off compile time (a minute or
    more on a small CPU, and a C++ compiler there); see docs/performance.md for where it helps.
    """
    model.clay_encoder.transformer.compile()
    return model
