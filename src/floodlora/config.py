"""Typed run configuration: small dataclasses, loaded from YAML, overridable from CLI flags.

Unknown keys are errors (a typo in a YAML file must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from floodlora.errors import ConfigError

T = TypeVar("T")

#: The adaptation strategies (kept here, free of torch, so that a config validates without importing models).
STRATEGIES: tuple[str, ...] = ("frozen", "lora", "full")
LATLON_ORDERS: tuple[str, ...] = ("auto", "lat-lon", "lon-lat", "zeros")
#: What a label marks. ``flood``: water the event brought (rapid-mapping style, judged against a
#: pre-event view). ``water``: all open water in the post-event image, permanent water included.
LABEL_KINDS: tuple[str, ...] = ("flood", "water")
DEFAULT_LABEL_KIND = "flood"  # chips whose source declares nothing
#: model.prior_features (floodlora.models.prior)
PRIOR_FEATURES: tuple[str, ...] = ("pixel", "context", "context-quantiles")
#: model.prior_fit: the chips the prior is fitted on (floodlora.training.engine)
PRIOR_FITS: tuple[str, ...] = ("crops", "whole", "whole-context")


@dataclass
class DataConfig:
    """Where the chips come from and how they are cut, normalised and augmented."""

    roots: list[str] = field(default_factory=list)
    format: str | None = None  # None: auto-detect per root
    views: list[str] = field(default_factory=lambda: ["pre", "post"])
    bands: list[str] = field(default_factory=lambda: ["vv", "vh"])
    normalization: str = (
        "auto"  # auto | per-scene | per-scene-8bit | per-view-8bit | clay-v1.5 | clay-v1 | stats YAML path
    )
    speckle_filter: str | None = None  # None | lee | refined-lee (docs/data.md)
    crop_size: int = 128
    batch_size: int = 4
    num_workers: int = 0
    augment: bool = True
    max_nodata_fraction: float = 0.5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    holdout_events: list[str] = field(default_factory=list)
    limit_train: int | None = None
    # Training draws: the share of chips that hold flood (0: uniform; most ETCI tiles are dry), and
    # whether each source gets a share that grows with the square root of its size, not its size.
    flood_sampling: float = 0.0
    balance_sources: bool = False
    # 8-bit sources without training chips: normalise with statistics of the chips being scored.
    stats_from_data: bool = False
    # Training only: a random per-band offset (up to this many standard deviations) and gain
    # (1 +- half of it) on the normalised values, so that a model leans on contrast, not on one
    # scene's calibration (8-bit sources and events differ in absolute level). 0: off.
    intensity_jitter: float = 0.0
    # Training only: the share of pre+post chips of new-water (flood) labels shown as a no-change pair
    # (the pre view twice, nothing flooded), so that the flood output keys on change, not on the
    # darkest part of a chip (every chip of some sources holds flood). 0: off.
    no_change_pairs: float = 0.0
    cache_chips: bool = False  # keep decoded chips in memory across epochs (about 0.5 MB per 256 px chip)
    seed: int = 0


@dataclass
class ModelConfig:
    """Which encoder, how it is adapted, and the decoder built on top."""

    checkpoint: str = "embedded"
    strategy: str = "lora"  # frozen | lora | full
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: 2 * rank (the reference method)
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["to_qkv", "to_out"])
    decoder: str = "hires"  # hires: + full-resolution pixel path | paper: the reference | more: DECODER_SPECS
    decoder_channels: list[int] | None = None  # None: sized from the encoder width
    share_decoder: bool = False
    # One output channel per label kind the training data holds: flood (new water, OMBRIA-style) and
    # water (all water in the post image: ETCI, C2S-MS, Sen1Floods11). Each chip trains its own kind's
    # channel; with a single output every label trains it, whatever it means.
    outputs: list[str] = field(default_factory=lambda: ["flood"])
    # A per-pixel logistic term on the inputs, fitted on the training chips before training
    # (floodlora.training.pixel_prior): the model starts from a fitted threshold.
    pixel_prior: bool = False
    # What the prior sees: pixel (a logistic term on each pixel's bands), context (an MLP over each
    # pixel's neighbourhood means and its tile's Otsu level and median) or context-quantiles (the
    # same plus the tile's quantiles and the local texture; floodlora.models.prior).
    prior_features: str = "pixel"
    prior_kinds: list[str] | None = None  # outputs whose prior is fitted (None: every output)
    # With a context form of prior_features, the outputs fitted as the MLP over context (None: every output);
    # the others get a logistic term on the pixel's own bands inside the same module. A rule over
    # tile-relative features needs many training events of its label kind to carry to a new one.
    prior_context_kinds: list[str] | None = None
    # Whether the fitted prior keeps training with the network (True) or stays as fitted (False):
    # trained jointly, it drifts to complement the decoder on the training events.
    prior_trainable: bool = True
    # What the prior is fitted on: `crops` (the training crops, augmented, as the network sees them),
    # `whole` (whole training chips as evaluation reads them, so that tile statistics match), or
    # `whole-context` (whole chips for the outputs fitted as the context MLP, crops for the others).
    prior_fit: str = "crops"
    view_dropout: float = 0.0
    # Training only: per chip, the rate at which the pixel stem and the pixel prior are left out, so
    # that the encoder's token path must predict on its own and cannot be ignored (hires decoders).
    pixel_dropout: float = 0.0
    gradient_checkpointing: bool | None = None  # None: on for `full` at >= 512 px
    # Order of Clay's location code: lat-lon [sin lat, cos lat, sin lon, cos lon] (Clay's tutorials),
    # lon-lat (lon first: what Clay's v1 training chips probably carried, docs/architecture.md), zeros
    # (no location), or auto: what the checkpoint declares (floodlora.models.registry).
    latlon_order: str = "auto"

    def __post_init__(self) -> None:
        """Fail when the config is built (a bad rank or strategy), not deep inside model construction."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"model.strategy: unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ConfigError(f"model.lora_rank: must be an integer >= 1, got {self.lora_rank!r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(
                f"model.lora_alpha: must be > 0 (or null for 2 x rank), got {self.lora_alpha!r}"
            )
        if self.latlon_order not in LATLON_ORDERS:
            raise ConfigError(
                f"model.latlon_order: must be one of {', '.join(LATLON_ORDERS)}, got {self.latlon_order!r}"
            )
        if (
            not self.outputs
            or len(set(self.outputs)) != len(self.outputs)
            or any(o not in LABEL_KINDS for o in self.outputs)
        ):
            raise ConfigError(f"model.outputs: distinct label kinds from flood, water; got {self.outputs!r}")
        if self.prior_features not in PRIOR_FEATURES:
            raise ConfigError(
                f"model.prior_features: must be one of {', '.join(PRIOR_FEATURES)}, "
                f"got {self.prior_features!r}"
            )
        if self.prior_fit not in PRIOR_FITS:
            choices = ", ".join(PRIOR_FITS)
            raise ConfigError(f"model.prior_fit: must be one of {choices}, got {self.prior_fit!r}")
        if self.prior_context_kinds is not None and any(
            k not in self.outputs for k in self.prior_context_kinds
        ):
            raise ConfigError(
                f"model.prior_context_kinds: must name outputs of this model ({', '.join(self.outputs)}), "
                f"got {self.prior_context_kinds!r}"
            )
        if not 0.0 <= self.pixel_dropout < 1.0:
            raise ConfigError(f"model.pixel_dropout: must be in [0, 1), got {self.pixel_dropout!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"model.lora_dropout: must be in [0, 1), got {self.lora_dropout!r}")


LOGGERS: tuple[str, ...] = ("csv", "tensorboard", "mlflow")
FEATURE_CACHE_AUTO = "auto"  # train.feature_cache: build the cache only where it saves encoder work
WEIGHT_AVERAGING = ("none", "swa")  # train.weight_averaging


@dataclass
class TrainConfig:
    """Optimisation recipe; the defaults are the reference method's."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    max_epochs: int = 50
    early_stopping_patience: int = 2
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    precision: str = "auto"  # auto: bf16-mixed on CUDA, 32 on CPU
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1  # multi-node DDP (torchrun / SLURM, see docs/distributed.md)
    seed: int = 0
    limit_train_batches: int | float | None = None  # int: batches, float: fraction
    limit_val_batches: int | float | None = None
    max_minutes: float | None = None  # wall-clock cap on fitting (Lightning max_time); None: no cap
    memory_cap_gb: float | None = None  # simulate a smaller accelerator: above it a run is OOM
    compile: bool = False
    # Frozen strategy only: cache encoder tokens on disk. "auto": only where the cache encodes fewer
    # pixels than live training would (floodlora.training.feature_cache.feature_cache_plan).
    feature_cache: bool | str = False
    # swa: validate, checkpoint and keep the uniform average of the weights after every optimiser
    # step (Lightning's WeightAveraging) rather than the last step's weights. Averaging along the
    # path flattens the minimum a short run ends in, which matters on events it never saw.
    weight_averaging: str = "none"
    # The run's threshold (and each output's calibration): the highest whose val F1 is within this
    # of the best (floodlora.metrics.operating_threshold); 0: the val-F1-optimal one.
    threshold_tolerance: float = 0.0
    logger: str = "csv"  # csv | tensorboard | mlflow; logs/metrics.csv is written in every case
    tracking_uri: str | None = None  # mlflow: None = a local file store in RUN_DIR/mlruns
    experiment: str = "floodlora"  # mlflow experiment name

    def __post_init__(self) -> None:
        if self.logger not in LOGGERS:
            raise ConfigError(f"train.logger: {self.logger!r} is not one of {', '.join(LOGGERS)}")
        if isinstance(self.feature_cache, str) and self.feature_cache != FEATURE_CACHE_AUTO:
            raise ConfigError(
                f"train.feature_cache: {self.feature_cache!r} is not one of true, false, {FEATURE_CACHE_AUTO}"
            )
        if not 0.0 <= self.threshold_tolerance < 1.0:
            raise ConfigError(
                f"train.threshold_tolerance: {self.threshold_tolerance!r} is not an F1 difference in [0, 1)"
            )
        if self.weight_averaging not in WEIGHT_AVERAGING:
            raise ConfigError(
                f"train.weight_averaging: {self.weight_averaging!r} is not one of "
                + ", ".join(WEIGHT_AVERAGING)
            )


@dataclass
class RunConfig:
    """Everything a run needs; written resolved into each run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert one YAML value to the dataclass field's declared type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a clear message."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (`--config paper`, `--config cpu-small`)."""
    from importlib import resources

    root = resources.files("floodlora") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """A YAML file path, or the name of a packaged config (a file of that name wins)."""
    from importlib import resources

    p = Path(path)
    if p.is_file():
        return p
    packaged = Path(str(resources.files("floodlora") / "configs" / f"{p.name}.yaml"))
    if p.suffix == "" and len(p.parts) == 1 and packaged.is_file():
        return packaged
    names = ", ".join(packaged_configs())
    raise ConfigError(f"{p}: config file not found (packaged configs: {names})")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults) and apply dotted overrides.

    Overrides look like ``{"model.lora_rank": 64}``; ``None`` values are skipped so unset CLI flags
    leave the file's values alone.
    """
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err.__class__.__name__})") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping with data/model/train sections")
        raw = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return from_dict(RunConfig, raw, str(path) if path else "config")


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config atomically as YAML."""
    import yaml

    from floodlora.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
