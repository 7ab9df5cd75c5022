"""Run directories and adapter files: what a training run leaves behind, and how a later command loads it.

Training writes these and inference / analysis / adaptation read them, so they sit below all three.

A run directory holds `config.yaml` (resolved), `weights.safetensors` (decoder + LoRA adapter for
frozen/LoRA runs, the whole model for full fine-tuning), `base.json` (base checkpoint name, sha256,
strategy, views, bands), `normalization.json` (the per-source presets it was trained with: every
later command normalises with these, never with statistics of the data it is given), and later
`metrics.json` (with the threshold chosen on val that `evaluate` and `predict` use by default) /
`accounting.json`. Frozen and LoRA runs do not copy the base encoder: loading checks the base
checkpoint's sha256 instead.

An adapter file is the LoRA tensors + decoder in safetensors, with the base checkpoint's name and sha256,
the LoRA settings, the run config, presets and threshold in its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from floodlora.config import RunConfig, from_dict, load_config, save_config
from floodlora.data.sar import NormalizationPreset
from floodlora.errors import CheckpointError, ConfigError
from floodlora.io import atomic_path, atomic_write_json
from floodlora.models.clay import checkpoint_sha256
from floodlora.models.factory import build_segmentor
from floodlora.models.registry import resolve_checkpoint
from floodlora.models.segmentor import FloodSegmentor
from floodlora.models.strategies import AdaptationStrategy, strategy_class, strategy_of

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.safetensors"
BASE_FILE = "base.json"
NORMALIZATION_FILE = "normalization.json"
METRICS_FILE = "metrics.json"
DEFAULT_THRESHOLD = 0.5
ADAPTER_FORMAT = "floodlora-adapter"


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    model: FloodSegmentor
    base: dict[str, Any]
    presets: dict[str, NormalizationPreset] = field(default_factory=dict)  # source format -> preset
    best_threshold: float | None = None  # the run's val threshold (metrics.json), when it recorded one

    @property
    def threshold(self) -> float:
        """What evaluate / predict use by default: the run's threshold chosen on val, else 0.5."""
        return DEFAULT_THRESHOLD if self.best_threshold is None else self.best_threshold

    @property
    def threshold_source(self) -> str:
        return "default" if self.best_threshold is None else "val (run)"


def base_fingerprint(checkpoint: str) -> str:
    """sha256 of the base checkpoint file, or a stable tag for randomly initialised encoders."""
    path = resolve_checkpoint(checkpoint)
    return f"{checkpoint}:seed0" if path is None else checkpoint_sha256(path)


def trainable_state(model: FloodSegmentor) -> dict[str, torch.Tensor]:
    """The tensors a run must store (the model's strategy decides: everything for `full`)."""
    return strategy_of(model).trainable_state(model)


def save_run(
    run_dir: str | Path,
    config: RunConfig,
    model: FloodSegmentor,
    presets: dict[str, NormalizationPreset] | None = None,
) -> None:
    """Write config, weights, base fingerprint and normalisation presets atomically."""
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
        "decoder": model.decoder_kind,
        "outputs": list(model.outputs),
        "pixel_prior": model.prior is not None,
        "prior_features": model.prior_kind,
        "encoder": model.clay_encoder.config.to_dict(),
        "latlon_order": model.latlon_order,
    }
    atomic_write_json(run_dir / BASE_FILE, base)
    if presets is not None:
        atomic_write_json(run_dir / NORMALIZATION_FILE, {f: p.to_dict() for f, p in sorted(presets.items())})


def read_base(run_dir: str | Path) -> dict[str, Any]:
    """`base.json` checked: a hand-edited or truncated file is a one-line error, not a KeyError later."""
    path = Path(run_dir) / BASE_FILE
    try:
        base = json.loads(path.read_text())
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err.strerror or err.__class__.__name__})") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(base, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(base).__name__}")
    missing = [k for k in ("checkpoint", "sha256", "strategy", "views", "bands") if k not in base]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)}")
    if not _stored_strategy(base["strategy"], path).needs_base and not isinstance(base.get("encoder"), dict):
        raise CheckpointError(f"{path}: a full fine-tuning run needs the 'encoder' size mapping")
    return base


def _stored_strategy(name: Any, where: Path) -> type[AdaptationStrategy]:
    """The strategy class a run or adapter file names; an unknown one is a CheckpointError."""
    try:
        return strategy_class(name)
    except ConfigError as err:
        raise CheckpointError(f"{where}: {err}") from None


def load_presets(run_dir: str | Path) -> dict[str, NormalizationPreset]:
    """The per-source presets a run was trained with ({} for runs written before they were stored)."""
    path = Path(run_dir) / NORMALIZATION_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable ({err.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a mapping of source format -> preset")
    return {fmt: NormalizationPreset.from_dict(d, f"{path} [{fmt}]") for fmt, d in raw.items()}


def load_threshold(run_dir: str | Path) -> float | None:
    """The run's threshold chosen on val (metrics.json `best_threshold`), or None when it has none."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("best_threshold")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and 0 < value < 1 else None


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
    base = read_base(run_dir)
    if checkpoint is not None:
        config.model.checkpoint = checkpoint
    weights_path = Path(weights) if weights else run_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file not found")
    stored = _stored_strategy(base["strategy"], run_dir / BASE_FILE)
    if stored.needs_base:
        found = base_fingerprint(config.model.checkpoint)
        if found != base["sha256"]:
            raise CheckpointError(
                f"{run_dir}: base checkpoint {config.model.checkpoint!r} has sha256 {found[:12]}..., "
                f"but this run was trained on {base['checkpoint']!r} ({base['sha256'][:12]}...)"
            )
    # A full run stores every weight, so the base file itself is not needed to rebuild it.
    blank = None if stored.needs_base else _blank_encoder(base)
    config.model.strategy = base["strategy"]
    config.model.decoder = base.get("decoder", "paper")  # runs from before the decoder option
    config.model.outputs = list(base.get("outputs", ["flood"]))  # runs from before label kinds
    config.model.pixel_prior = bool(base.get("pixel_prior", False))
    config.model.prior_features = str(base.get("prior_features", "pixel"))  # runs from before the option
    # the order the run was trained with (runs from before the option: lat first)
    config.model.latlon_order = base.get("latlon_order", "lat-lon")
    model = build_segmentor(config.model, base["views"], base["bands"], encoder=blank)
    try:
        state = load_file(str(weights_path))
    except Exception as err:
        raise CheckpointError(f"{weights_path}: cannot read weights ({str(err).splitlines()[0]})") from None
    strategy_of(model).load_state(model, state, str(weights_path))
    model.eval()
    return LoadedRun(run_dir, config, model, base, load_presets(run_dir), load_threshold(run_dir))


def _blank_encoder(base: dict[str, Any]) -> Any:
    """An encoder of the stored size (its weights come from the run), without a checkpoint file."""
    import torch

    from floodlora.models.clay import ClayEncoder, ClayEncoderConfig

    try:
        cfg = ClayEncoderConfig(**base["encoder"])
    except TypeError as err:
        raise CheckpointError(f"{BASE_FILE}: invalid 'encoder' mapping ({err})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ClayEncoder(cfg)


# --------------------------------------------------------------------------------------------------
# adapter-only files
# --------------------------------------------------------------------------------------------------


def adapter_state(model: FloodSegmentor) -> dict[str, torch.Tensor]:
    """LoRA tensors + decoder/head: everything a run adds to its base checkpoint."""
    return strategy_of(model).adapter_state(model)


def save_adapter(
    path: str | Path,
    model: FloodSegmentor,
    config: RunConfig,
    base: dict[str, Any],
    name: str | None = None,
    presets: Mapping[str, Any] | None = None,
    threshold: float | None = None,
) -> Path:
    """Write an adapter-only safetensors file (atomically) that any copy of the base checkpoint can load.

    The run's normalisation presets and threshold travel in the metadata, so a loaded adapter
    predicts exactly as its run does.
    """
    presets = dict(presets or {})
    import yaml
    from safetensors.torch import save_file

    path = Path(path)
    strategy = strategy_of(model)
    meta = {
        "format": ADAPTER_FORMAT,
        "version": "1",
        "name": name or path.stem,
        "strategy": model.strategy,
        "base_checkpoint": str(base.get("checkpoint", config.model.checkpoint)),
        "base_sha256": str(base["sha256"]),
        "decoder": model.decoder_kind,
        "outputs": json.dumps(list(model.outputs)),
        "pixel_prior": json.dumps(model.prior is not None),
        "prior_features": model.prior_kind,
        "views": json.dumps(list(model.views)),
        "bands": json.dumps(list(model.bands)),
        "encoder": json.dumps(model.clay_encoder.config.to_dict()),
        "lora": json.dumps(strategy.adapter_metadata()),
        "config": yaml.safe_dump(config.to_dict(), sort_keys=False),
        "normalization": json.dumps({f: p.to_dict() for f, p in sorted(presets.items())}),
        "threshold": json.dumps(threshold),
        "latlon_order": str(getattr(model, "latlon_order", "lat-lon")),
    }
    with atomic_path(path) as tmp:
        save_file(strategy.adapter_state(model), str(tmp), metadata=meta)
    return path


def read_adapter_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path}: not a floodlora adapter file (no '{ADAPTER_FORMAT}' metadata)")
    return meta


def load_adapter(path: str | Path, checkpoint: str | None = None) -> LoadedRun:
    """Rebuild a segmentor from the base checkpoint + an adapter file; returns a LoadedRun.

    `checkpoint` relocates the base (default: the name stored in the adapter); its sha256 must match
    the one the adapter was trained on.
    """
    import yaml
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_adapter_metadata(path)
    config = from_dict(RunConfig, yaml.safe_load(meta["config"]) or {}, f"{path}:config")
    config.model.checkpoint = checkpoint or meta["base_checkpoint"]
    if not _stored_strategy(meta.get("strategy"), path).needs_base:
        raise CheckpointError(f"{path}: strategy {meta['strategy']!r} stores every weight: no adapter")
    config.model.strategy = meta["strategy"]
    config.model.decoder = meta.get("decoder", "paper")
    config.model.outputs = json.loads(meta.get("outputs", '["flood"]'))
    config.model.pixel_prior = json.loads(meta.get("pixel_prior", "false"))
    config.model.prior_features = meta.get("prior_features", "pixel")
    config.model.latlon_order = meta.get("latlon_order", "lat-lon")  # older adapters: lat first
    found = base_fingerprint(config.model.checkpoint)
    if found != meta["base_sha256"]:
        raise CheckpointError(
            f"{path}: adapter {meta['name']!r} was trained on base {meta['base_checkpoint']!r} "
            f"({meta['base_sha256'][:12]}...), but {config.model.checkpoint!r} has sha256 {found[:12]}..."
        )
    views, bands = json.loads(meta["views"]), json.loads(meta["bands"])
    model = build_segmentor(config.model, views, bands)
    strategy_of(model).load_state(model, load_file(str(path)), str(path))
    model.eval()
    base = {
        "checkpoint": config.model.checkpoint,
        "sha256": meta["base_sha256"],
        "strategy": meta["strategy"],
        "views": views,
        "bands": bands,
        "adapter": meta["name"],
        "decoder": model.decoder_kind,
    }
    presets = {
        f: NormalizationPreset.from_dict(d, f"{path} [{f}]")
        for f, d in json.loads(meta.get("normalization", "{}")).items()
    }
    threshold = json.loads(meta.get("threshold", "null"))
    return LoadedRun(path, config, model, base, presets, None if threshold is None else float(threshold))
