"""Run directories: what a training run leaves behind, and how a later command loads it back.

A run directory holds `config.yaml` (resolved), `weights.safetensors` (decoder + LoRA adapter for
frozen/LoRA runs, the whole model for full fine-tuning), `base.json` (base checkpoint name, sha256,
strategy, views, bands), and later `metrics.json` / `accounting.json`. Frozen and LoRA runs do
not copy the base encoder: loading checks the base checkpoint's sha256 instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from floodlora.config import RunConfig, load_config, save_config
from floodlora.errors import CheckpointError
from floodlora.io import atomic_path, atomic_write_json
from floodlora.models.clay import checkpoint_sha256
from floodlora.models.factory import build_segmentor
from floodlora.models.registry import resolve_checkpoint
from floodlora.models.segmentor import FloodSegmentor

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.safetensors"
BASE_FILE = "base.json"


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    model: FloodSegmentor
    base: dict[str, Any]


def base_fingerprint(checkpoint: str) -> str:
    """sha256 of the base checkpoint file, or a stable tag for randomly initialised encoders."""
    path = resolve_checkpoint(checkpoint)
    return f"{checkpoint}:seed0" if path is None else checkpoint_sha256(path)


def trainable_state(model: FloodSegmentor) -> dict[str, torch.Tensor]:
    """The tensors a run must store: everything for `full`, decoder + adapters otherwise."""
    state = model.state_dict()
    if model.strategy == "full":
        keep = state
    else:
        keep = {k: v for k, v in state.items() if not k.startswith("encoder.") or "lora_" in k}
    return {k: v.detach().contiguous().cpu() for k, v in keep.items()}


def save_run(run_dir: str | Path, config: RunConfig, model: FloodSegmentor) -> None:
    """Write config, weights and base fingerprint atomically."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG_FILE)
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(trainable_state(model), str(tmp), metadata={"strategy": model.strategy})
    base = {
        "checkpoint": config.model.checkpoint,
        "sha256": base_fingerprint(config.model.checkpoint),
        "strategy": model.strategy,
        "views": list(model.views),
        "bands": list(model.bands),
        "encoder": model.clay_encoder.config.to_dict(),
    }
    atomic_write_json(run_dir / BASE_FILE, base)


def load_run(
    run_dir: str | Path, checkpoint: str | None = None, weights: str | Path | None = None
) -> LoadedRun:
    """Rebuild a trained segmentor; `checkpoint` relocates the base, `weights` picks an adapter file."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, BASE_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir}: not a floodlora run directory ({name} is missing)")
    config = load_config(run_dir / CONFIG_FILE)
    base = json.loads((run_dir / BASE_FILE).read_text())
    if checkpoint is not None:
        config.model.checkpoint = checkpoint
    weights_path = Path(weights) if weights else run_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found")
    if base["strategy"] != "full":
        found = base_fingerprint(config.model.checkpoint)
        if found != base["sha256"]:
            raise CheckpointError(
                f"{run_dir}: base checkpoint {config.model.checkpoint!r} has sha256 {found[:12]}..., "
                f"but this run was trained on {base['checkpoint']!r} ({base['sha256'][:12]}...)"
            )
    # A full run stores every weight, so the base file itself is not needed to rebuild it.
    if base["strategy"] == "full":
        config.model.checkpoint = f"random:{_preset_for(base)}"
    config.model.strategy = base["strategy"]
    model = build_segmentor(config.model, base["views"], base["bands"])
    try:
        state = load_file(str(weights_path))
    except Exception as err:
        raise CheckpointError(f"{weights_path}: cannot read weights ({str(err).splitlines()[0]})") from None
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(
            f"{weights_path}: weights do not fit this model: "
            f"unexpected {', '.join(result.unexpected_keys[:4])}"
        )
    stored_missing = [k for k in result.missing_keys if not k.startswith("encoder.") or "lora_" in k]
    if base["strategy"] == "full":
        stored_missing = result.missing_keys
    if stored_missing:
        raise CheckpointError(f"{weights_path}: weights are missing {', '.join(stored_missing[:4])}")
    model.eval()
    return LoadedRun(run_dir, config, model, base)


def _preset_for(base: dict[str, Any]) -> str:
    """Register the stored encoder size as an ad-hoc preset so a full run can be rebuilt blind."""
    from floodlora.models.clay import PRESETS, ClayEncoderConfig

    cfg = ClayEncoderConfig(**base["encoder"])
    for name, preset in PRESETS.items():
        if preset == cfg:
            return name
    name = f"run-{cfg.dim}x{cfg.depth}x{cfg.heads}x{cfg.dim_head}"
    PRESETS[name] = cfg
    return name
