"""Test-time augmentation and Monte Carlo LoRA dropout: the mean probability and its spread per pixel."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch

from floodlora.errors import ConfigError

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


# --------------------------------------------------------------------------------------------------
# model passes: flips (TTA) and LoRA-dropout samples
# --------------------------------------------------------------------------------------------------


@contextmanager
def lora_dropout_active(model: torch.nn.Module) -> Iterator[int]:
    """Switch only the LoRA dropout layers to train mode (Monte-Carlo dropout); yields how many."""
    layers = [
        m
        for n, m in model.named_modules()
        if "lora_dropout" in n and isinstance(m, torch.nn.Dropout) and m.p > 0
    ]
    for m in layers:
        m.train()
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.eval()


def predict_probabilities(
    model: torch.nn.Module,
    views: Mapping[str, torch.Tensor],
    time: torch.Tensor | Mapping[str, torch.Tensor] | None = None,  # one code, or one per view
    latlon: torch.Tensor | None = None,
    tta: bool = False,
    mc_samples: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flood probability `[B, 1, H, W]` (mean over the samples) and its spread (std) when > 1 sample.

    Samples are the 4 flips with `tta`, or `mc_samples` LoRA-dropout passes (cycling the flips
    when both are asked for).
    """
    flips = TTA_FLIPS if tta else ((),)
    n = mc_samples if mc_samples > 0 else len(flips)
    probs = []
    with ExitStack() as stack:
        if mc_samples > 0:
            active = stack.enter_context(lora_dropout_active(model))
            if active == 0:
                raise ConfigError(
                    "Monte-Carlo LoRA dropout needs an unmerged LoRA run with lora_dropout > 0; "
                    "use flip TTA for the uncertainty layer instead"
                )
        for i in range(n):
            dims = flips[i % len(flips)]
            x = {k: torch.flip(v, dims) if dims else v for k, v in views.items()}
            logits = model(x, time=time, latlon=latlon).float()  # probabilities in fp32 under autocast
            if dims:
                logits = torch.flip(logits, dims)
            probs.append(torch.sigmoid(logits))
    stack_p = torch.stack(probs)
    mean = stack_p.mean(0)
    spread = stack_p.std(0, unbiased=False) if n > 1 else None
    return mean, spread
