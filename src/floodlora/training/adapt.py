"""Few-label adaptation: `floodlora adapt FROM --data PATH --out RUN`.

A responder has a handful of labelled chips of a new flood. `adapt` fits a starting model to them
and writes an ordinary run directory (evaluate / predict / export accept it): by default a trained
model's operating point is set on the chips (calibration), and a bare encoder's LoRA adapters and
decoder are fine-tuned, with a budget sized for few labels. Fine-tuning reuses `train_run` for the
loops, checkpoints and the run directory, and changes only what few labels need:

* **Where it starts.** FROM is a run directory, an exported model (a `export --merge` directory or
  an adapter file from `export --adapter`), or an encoder (a registry name such as ``embedded``, or
  a checkpoint file). A trained FROM keeps its normalisation presets (every source format it covers
  is normalised with FROM's numbers) and its views, bands and decoder. A merged FROM gets fresh
  LoRA adapters on its merged encoder and is merged again at the end (the result is standalone).
* **Which chips stop it.** By default every labelled chip trains and early stopping follows the
  loss on the training chips themselves (whole chips, no augmentation): with ten chips a held-back
  quarter is two or three chips, too few to stop on or to choose a threshold with, and on the
  few-shot benchmark training on all of them scored higher (docs/quality.md). With ``hold_back``
  and at least `min_holdout_chips` chips, a quarter (at least 2, flooded chips spread over both
  parts) is held back: early stopping and the val-optimal threshold come from them.
* **How long.** Epochs of `steps_per_epoch` batches drawn with replacement (flooded chips
  favoured), at most `max_epochs`, and a wall-clock cap (`max_minutes`).
* **Whole chips, not crops.** By default each training sample is a whole chip (up to 256 px, as
  `labels` cuts them), in batches that hold as many pixels as FROM's 8 crops of 128 px. Evaluation
  and prediction read whole tiles, and the context prior's tile statistics (Otsu level, median,
  quantiles) differ between a 128-px crop and its chip: fine-tuned on crops, the network learns to
  correct a prior that behaves otherwise at prediction time (docs/quality.md measures both).
* **Then its operating point** (`calibrate_after`, on by default). Fine-tuned models under-flagged
  at times on the few-shot benchmark (precision far above recall), so each output's operating point
  is then set on *every* labelled chip: by default at the best F1 on them (``tolerance_for``).
* **Or only the operating point** (``method="calibrate"``): no weight but each output's final
  bias changes. Its threshold on *every* labelled chip is moved to 0.5, in seconds: of the
  thresholds within `calibrate_tolerance` F1 (by default CALIBRATE_TOLERANCE, one point) of the
  best on the chips, the one nearest FROM's own (0: the best). A few chips give a flat F1 curve
  near its top, so the model's operating point moves only as far as they demand. On events held
  out of the quality benchmark the model often ranks pixels well while the threshold learned on
  other events does not fit (docs/quality.md); one number per output is all a few chips need to
  set, so none is held back.
* **Which of the two** (``method="auto"``, the default): a trained FROM is calibrated, a bare
  encoder (no decoder to calibrate) is fine-tuned. Calibration is the safe default for a trained
  model: in seconds, and on the few-shot benchmark never more than a fraction of a point below the
  untouched model; fine-tuning it is a minute's try that helped on some held-out floods and not on
  others (docs/quality.md).

`RUN/adapt.json` records where it started (kind, path, sha256 of FROM's weights file or
checkpoint, FROM's base checkpoint), which chips trained and which were held back, the budget and
the wall time. The function :func:`adapt` is what a benchmark calls.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from floodlora.config import RunConfig
from floodlora.data.datamodule import (
    FloodDataModule,
    GroupedBatchSampler,
    _unit_hash,
    sampling_weights,
)
from floodlora.data.sources import ChipRef
from floodlora.errors import CheckpointError, ConfigError, DataError
from floodlora.io import atomic_write_json
from floodlora.training.options import (  # noqa: F401  (re-exported: the adapt API)
    AFTER_TUNING_TOLERANCE,
    CALIBRATE_TOLERANCE,
    DEFAULT_RECIPE,
    METHODS,
    STEP_PIXELS,
    WHOLE_CHIP_MAX,
    AdaptOptions,
)

ADAPT_FILE = "adapt.json"


@dataclass
class Origin:
    """What FROM turned out to be, and the fingerprint the adapted run records."""

    kind: str  # run | merged | adapter | encoder
    path: str
    sha256: str
    base_checkpoint: str
    base_sha256: str
    loaded: Any = None  # LoadedRun for trained starting points

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "loaded"}


@dataclass
class AdaptResult:
    run_dir: Path
    summary: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# FROM
# --------------------------------------------------------------------------------------------------


def resolve_origin(from_: str | Path, checkpoint: str | None = None) -> Origin:
    """Load FROM: a run or merged-export directory, an adapter file (or a folder with one), or an encoder.

    `checkpoint` relocates a trained FROM's base checkpoint, as in evaluate / predict.
    """
    from floodlora.models.clay import checkpoint_sha256
    from floodlora.runs import (
        BASE_FILE,
        CONFIG_FILE,
        WEIGHTS_FILE,
        base_fingerprint,
        load_adapter,
        load_run,
        read_adapter_metadata,
    )

    path = Path(from_)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file() or (path / BASE_FILE).is_file():
            loaded = load_run(path, checkpoint=checkpoint)
            kind = (
                "merged" if loaded.base["strategy"] == "full" and (path / "export.json").is_file() else "run"
            )
            return Origin(
                kind, str(path), checkpoint_sha256(path / WEIGHTS_FILE), str(loaded.base.get("checkpoint")),
                str(loaded.base.get("sha256")), loaded,
            )  # fmt: skip
        adapters = sorted(path.glob("*.safetensors"))
        if len(adapters) != 1:
            found = ", ".join(p.name for p in adapters) or "none"
            raise ConfigError(
                f"{path}: not a run directory, and not an export folder with one adapter file ({found})"
            )
        path = adapters[0]
    if path.is_file() and path.suffix == ".safetensors":
        try:
            read_adapter_metadata(path)
        except CheckpointError:
            pass  # an encoder checkpoint in safetensors form
        else:
            loaded = load_adapter(path, checkpoint=checkpoint)
            return Origin(
                "adapter", str(path), checkpoint_sha256(path), str(loaded.base["checkpoint"]),
                str(loaded.base["sha256"]), loaded,
            )  # fmt: skip
    name = str(from_)
    sha = base_fingerprint(name)  # a CheckpointError names the known encoders
    return Origin("encoder", name, sha, name, sha)


# --------------------------------------------------------------------------------------------------
# chips: which train, which are held back
# --------------------------------------------------------------------------------------------------


def choose_holdout(
    refs: Sequence[ChipRef], has_flood: Sequence[bool], fraction: float, minimum: int, seed: int = 0
) -> list[ChipRef]:
    """The held-back chips: none below `minimum` chips, else round(fraction * n) (at least 2).

    Chips are taken in a seeded hash order, alternating flooded and dry ones, with at most half of
    the flooded chips held back: the held-back part holds flood whenever at least two chips do.
    """
    n = len(refs)
    if n < minimum:
        return []
    k = min(n - 1, max(2, round(fraction * n)))
    order = sorted(range(n), key=lambda i: _unit_hash("holdout", seed, refs[i].format, refs[i].chip_id))
    wet = [i for i in order if has_flood[i]]
    dry = [i for i in order if not has_flood[i]]
    wet_q = wet[: len(wet) // 2]  # the training part keeps at least half of the flooded chips
    picked: list[int] = []
    while len(picked) < k and (wet_q or dry):
        for q in (wet_q, dry):
            if q and len(picked) < k:
                picked.append(q.pop(0))
    rest = [i for i in order if i not in picked]
    picked += rest[: k - len(picked)]
    return [refs[i] for i in sorted(picked)]


def whole_chip_crop(smallest_side: int) -> int:
    """The default training crop: the chips' smallest side cut to a multiple of 8, at most 256 px."""
    return max(8, min(WHOLE_CHIP_MAX, smallest_side) // 8 * 8)


@dataclass
class PseudoLabels:
    """Self-adaptation's labels: chip key -> a uint8 ``.npy`` file, and the kind they mark.

    Every discovered chip takes its pseudo-labels in place of its own (labelled or not); chips with
    none are left out. Early stopping and the operating point score at most `max_scored` chips, evenly
    spread, since a scene cut into hundreds of chips would spend the budget on scoring.
    """

    files: dict[str, str]
    kinds: dict[str, str]  # chip key -> flood | water
    max_scored: int = 48

    def apply(self, refs: list[ChipRef]) -> list[ChipRef]:
        from floodlora.data.sources import PSEUDO_MASK

        out = []
        for ref in refs:
            if ref.key in self.files:
                ref.extra[PSEUDO_MASK] = self.files[ref.key]
                ref.extra["labels"] = self.kinds[ref.key]
                ref.labelled = True
                out.append(ref)
        return out

    def scored(self, refs: list[ChipRef]) -> list[ChipRef]:
        if len(refs) <= self.max_scored:
            return list(refs)
        step = len(refs) / self.max_scored
        return [refs[int(i * step)] for i in range(self.max_scored)]


class FewShotDataModule(FloodDataModule):
    """Every labelled chip is the budget: a held-back part (or none), and epochs of a fixed size."""

    #: a domain-shift warning here must not advise running `adapt`: it is running
    shift_advice = "the operating point is now set on these labelled chips"

    def __init__(
        self,
        config: Any,
        options: AdaptOptions,
        pseudo: PseudoLabels | None = None,
        **kwargs: Any,
    ) -> None:
        """`pseudo`: self-adaptation's pseudo-labels, which replace every chip's own labels."""
        super().__init__(config, **kwargs)
        self.options = options
        self.pseudo = pseudo
        self.holdout: list[ChipRef] = []

    def assign_splits(self, refs: list[ChipRef]) -> dict[str, list[ChipRef]]:
        from floodlora.data.sources import read_sample

        if self.pseudo is not None:
            refs[:] = self.pseudo.apply(refs)
        labelled = [r for r in refs if r.labelled]
        if not labelled:
            raise DataError(f"{', '.join(self.config.roots)}: no labelled chips to adapt on")
        flood, sides = [], {}
        for ref in labelled:
            mask = read_sample(ref).mask
            flood.append(mask is not None and bool((mask == 1).any()))
            sides[(ref.format, ref.chip_id)] = min(mask.shape) if mask is not None else WHOLE_CHIP_MAX
        if not any(flood):
            raise DataError(
                f"{', '.join(self.config.roots)}: none of the {len(labelled)} labelled chips holds flood "
                "(mask value 1); label at least one flooded area"
            )
        opts = self.options
        scored = self.pseudo.scored(labelled) if self.pseudo is not None else labelled
        if opts.method == "calibrate":  # every chip scores; nothing trains
            return {"train": [], "val": scored, "test": [], "ood": []}
        self.holdout = (
            choose_holdout(labelled, flood, opts.holdout_fraction, opts.min_holdout_chips, opts.seed)
            if opts.hold_back
            else []
        )
        held = {(r.format, r.chip_id) for r in self.holdout}
        train = [r for r in labelled if (r.format, r.chip_id) not in held]
        self._size_samples(min(sides[(r.format, r.chip_id)] for r in train))
        # Too few to hold any back: the loss on the training chips (whole, unaugmented) stops it.
        val = list(self.holdout) or (self.pseudo.scored(train) if self.pseudo is not None else list(train))
        return {"train": train, "val": val, "test": [], "ood": []}

    def _size_samples(self, smallest_side: int) -> None:
        """Set the training crop and batch the options leave open (None): whole chips, equal pixels."""
        opts, cfg = self.options, self.config
        if opts.crop_size is None:
            cfg.crop_size = whole_chip_crop(smallest_side)
        if opts.batch_size is None:
            cfg.batch_size = max(1, round(STEP_PIXELS / cfg.crop_size**2))

    def train_batch_sampler(self) -> GroupedBatchSampler | None:
        """`steps_per_epoch` batches per epoch, drawn with replacement, flooded chips favoured."""
        self.setup()
        cfg, refs = self.config, self.splits["train"]
        if not refs:
            raise DataError(f"{', '.join(cfg.roots)}: no usable training chips (all mostly nodata?)")
        info = [self.chip_info[(r.format, r.chip_id)] for r in refs]
        weights = sampling_weights(
            [r.format for r in refs], [i[0] for i in info], cfg.flood_sampling, cfg.balance_sources
        )
        n = self.options.steps_per_epoch * cfg.batch_size
        return GroupedBatchSampler(weights, [i[1] for i in info], cfg.batch_size, n, cfg.seed)


def _presets_for(
    roots: list[str],
    format: str | None,
    fixed: dict[str, Any],
    normalization: str,
    base: str,
    pseudo: PseudoLabels | None = None,
) -> dict[str, Any]:
    """FROM's presets, plus statistics of the adaptation chips for 8-bit sources FROM never saw."""
    from floodlora.data.datamodule import resolve_presets
    from floodlora.data.sources import discover

    if not fixed:
        return {}
    refs = _usable(discover(roots, format), pseudo)
    new = [r for r in refs if r.format not in fixed and r.units == "scaled-uint8"]
    presets = dict(fixed)
    if new:
        presets.update(resolve_presets(normalization, new, new, base))
    return presets


# --------------------------------------------------------------------------------------------------
# adapt
# --------------------------------------------------------------------------------------------------


def _usable(refs: list[ChipRef], pseudo: PseudoLabels | None) -> list[ChipRef]:
    """The chips adaptation learns from: the labelled ones, or those that have pseudo-labels."""
    return pseudo.apply(refs) if pseudo is not None else [r for r in refs if r.labelled]


def _data_views(roots: list[str], format: str | None, pseudo: PseudoLabels | None = None) -> list[str]:
    """The views the labelled chips hold (a bare encoder is built for what the data has)."""
    from floodlora.data.sample import VIEWS
    from floodlora.data.sources import discover, read_sample

    refs = _usable(discover(roots, format), pseudo)
    if not refs:
        raise DataError(f"{', '.join(roots)}: no labelled chips to adapt on")
    present = set(read_sample(refs[0]).views)
    return [v for v in VIEWS if v in present]


def adapt_config(
    origin: Origin,
    roots: list[str],
    format: str | None,
    opts: AdaptOptions,
    pseudo: PseudoLabels | None = None,
) -> RunConfig:
    """The adapted run's config: FROM's model and data settings, the few-label training budget."""
    from floodlora.config import load_config

    if origin.loaded is not None:
        cfg = copy.deepcopy(origin.loaded.config)
        cfg.data.views = list(origin.loaded.base["views"])
        cfg.data.bands = list(origin.loaded.base["bands"])
        cfg.model.strategy = "lora"
    else:
        cfg = load_config(opts.recipe)
        cfg.model.checkpoint = origin.path
        cfg.data.views = _data_views(roots, format, pseudo)
        if opts.lora_rank is not None:
            cfg.model.lora_rank = opts.lora_rank
        if opts.prior is not None:
            cfg.model.pixel_prior = opts.prior
    d, t = cfg.data, cfg.train
    d.roots, d.format = [str(r) for r in roots], format
    d.holdout_events, d.limit_train, d.stats_from_data = [], None, False
    d.batch_size = opts.batch_size or d.batch_size  # None: set from the chips (FewShotDataModule)
    d.crop_size = opts.crop_size or d.crop_size
    d.flood_sampling, d.cache_chips, d.augment = opts.flood_sampling, True, True
    d.max_nodata_fraction = 0.999  # responders' chips are mostly unlabelled (255): keep any labelled one
    d.seed = opts.seed
    t.lr, t.max_epochs, t.max_minutes = opts.lr, opts.max_epochs, opts.max_minutes
    t.early_stopping_patience = opts.patience
    t.plateau_patience = max(1, opts.patience // 2)
    t.limit_train_batches, t.limit_val_batches = None, None
    t.devices, t.num_nodes, t.feature_cache, t.compile = 1, 1, False, False
    t.seed = opts.seed
    return cfg


def _prepare_model(origin: Origin, cfg: RunConfig) -> Any:
    """FROM's model ready to train LoRA + decoder (None: train_run builds one from the config)."""
    from floodlora.models.factory import lora_settings
    from floodlora.models.strategies import LoraStrategy, strategy_of

    if origin.loaded is None:
        return None
    model = origin.loaded.model
    if not strategy_of(model).has_adapters:
        # merged / full / frozen: fresh adapters on its encoder (decoder weights kept)
        LoraStrategy(lora_settings(cfg.model)).prepare(model)
    model.train()
    return model


def adapt(
    from_: str | Path,
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    format: str | None = None,
    options: AdaptOptions | None = None,
    checkpoint: str | None = None,
    progress: bool = False,
    pseudo: PseudoLabels | None = None,
    overwrite: bool = False,
) -> AdaptResult:
    """Adapt FROM to the labelled chips under `data` (calibrate or fine-tune, `options.method`);
    write the run `out`. With `pseudo` (self-adaptation) the chips' own labels are replaced by those.

    Returns the run directory and a summary (chips, held-back chips, epochs, wall time, val or
    training-chip F1, where it started); the same summary is `out/adapt.json`. A run that fails
    removes what it wrote, so that the same command can be run again; `overwrite` replaces an earlier
    run (or one that was killed) in `out`.

    Raises:
        ConfigError / CheckpointError: FROM is neither a run, an export nor an encoder.
        DataError: no labelled chips, or none with flood.
    """
    opts = options or AdaptOptions()
    roots = [str(data)] if isinstance(data, str | Path) else [str(d) for d in data]
    if not roots:
        raise ConfigError("adapt: pass --data PATH (labelled chips)")
    out = Path(out)
    _check_out(out, overwrite)
    existed = out.is_dir()
    try:
        return _adapt(from_, roots, out, format, opts, checkpoint, progress, pseudo)
    except BaseException:
        _remove_partial(out, existed)
        raise


def _check_out(out: Path, overwrite: bool) -> None:
    """`out` must be new or empty; with `overwrite`, an earlier (or interrupted) run there is removed."""
    if not (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        return
    is_run = out.is_dir() and any((out / name).exists() for name in (ADAPT_FILE, "config.yaml"))
    if overwrite and is_run:
        shutil.rmtree(out)
        return
    if is_run and not (out / ADAPT_FILE).exists():
        raise ConfigError(
            f"{out}: holds an interrupted adapt run (no {ADAPT_FILE}); pass --overwrite to replace it"
        )
    if is_run:
        raise ConfigError(
            f"{out}: already holds a run; pass --overwrite to replace it or choose another --out"
        )
    raise ConfigError(f"{out}: already exists and is not empty; choose another --out")


def _remove_partial(out: Path, existed: bool) -> None:
    """Remove what a failed run wrote: the folder if this run made it, else the folder's contents."""
    if not out.is_dir():
        return
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _adapt(
    from_: str | Path,
    roots: list[str],
    out: Path,
    format: str | None,
    opts: AdaptOptions,
    checkpoint: str | None,
    progress: bool,
    pseudo: PseudoLabels | None = None,
) -> AdaptResult:
    """The work of :func:`adapt`, once its output folder is known to be free."""
    from floodlora.models.registry import checkpoint_normalization
    from floodlora.training.engine import train_run

    t0 = time.perf_counter()
    origin = resolve_origin(from_, checkpoint)
    opts = replace(opts, method=resolve_method(opts.method, origin))
    cfg = adapt_config(origin, roots, format, opts, pseudo)
    base_norm = checkpoint_normalization(origin.base_checkpoint)
    fixed = dict(origin.loaded.presets) if origin.loaded is not None else {}
    presets = _presets_for(roots, format, fixed, cfg.data.normalization, base_norm, pseudo)
    datamodule = FewShotDataModule(
        cfg.data, opts, pseudo, base_normalization=base_norm, presets=presets or None
    )
    datamodule.setup("fit")
    if opts.method == "calibrate":
        return _calibrate_only(origin, cfg, out, datamodule, t0, progress, opts.tolerance_for("calibrate"))
    model = _prepare_model(origin, cfg)
    merged = origin.loaded is not None and origin.loaded.base["strategy"] == "full"
    result = train_run(cfg, out, progress=progress, model=model, datamodule=datamodule)

    metrics = dict(result.metrics)
    held_back = bool(datamodule.holdout)
    if not held_back:  # the "val" report is the training chips: no threshold is chosen on them
        metrics = {"train_chips": metrics.pop("val"), "threshold_source": "default (no held-back chips)"}
        atomic_write_json(out / "metrics.json", metrics)
    if merged:
        _save_merged(out, result.config, model, datamodule.presets)
    fine_tune_threshold = metrics.get("best_threshold", 0.5)
    after = _calibrate_after(out, opts, base_norm, progress) if opts.calibrate_after else None
    if after is not None:
        metrics = {**metrics, **after["metrics"]}
        atomic_write_json(out / "metrics.json", metrics)
    summary = {
        "from": origin.describe(),
        "method": "fine-tune",
        "chips": {
            "train": sorted(r.chip_id for r in datamodule.splits["train"]),
            "held_back": sorted(r.chip_id for r in datamodule.holdout),
        },
        "early_stopping_on": "held-back chips' loss" if held_back else "training chips' loss",
        "threshold": metrics.get("best_threshold", 0.5),  # what evaluate / predict use
        "fine_tune_threshold": fine_tune_threshold,
        "f1": (metrics["val"]["at_best_threshold"]["f1"] if held_back else metrics["train_chips"]["f1"]),
        "calibrated_after": after["summary"] if after is not None else None,
        "samples": {"crop_size": cfg.data.crop_size, "batch_size": cfg.data.batch_size},
        "epochs": result.accounting.get("epochs"),
        "early_stopped": result.accounting.get("early_stopped"),
        "trainable_params": result.accounting.get("trainable_params"),
        "budget": asdict(opts),
        "normalization": sorted(datamodule.presets),
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / ADAPT_FILE, summary)
    return AdaptResult(out, summary, metrics)


def resolve_method(method: str, origin: Origin) -> str:
    """``calibrate`` or ``fine-tune``: ``auto`` calibrates a trained FROM, fine-tunes a bare encoder."""
    if method == "auto":
        return "calibrate" if origin.loaded is not None else "fine-tune"
    if method == "calibrate" and origin.loaded is None:
        raise ConfigError(
            f"adapt --method calibrate: {origin.path} is a bare encoder with no trained decoder; "
            "calibrate a trained run or export, or use --method fine-tune"
        )
    return method


def _calibrate_only(
    origin: Origin,
    cfg: RunConfig,
    out: Path,
    datamodule: FewShotDataModule,
    t0: float,
    progress: bool,
    tolerance: float = 0.0,
) -> AdaptResult:
    """FROM with each output's threshold on every labelled chip moved to 0.5: the one nearest
    FROM's own threshold within `tolerance` F1 of the best (0: the F1-optimal one)."""
    from_threshold = origin.loaded.threshold if origin.loaded.threshold is not None else 0.5
    point = _set_operating_point(origin.loaded.model, cfg, datamodule, from_threshold, tolerance, progress)
    _save_model_run(out, cfg, origin.loaded.model, datamodule.presets)
    metrics = point["metrics"]
    threshold = metrics["best_threshold"]
    atomic_write_json(out / "metrics.json", metrics)
    refs = datamodule.splits["val"]
    summary = {
        "from": origin.describe(),
        "method": "calibrate",
        "chips": {"train": [], "held_back": [], "calibrated_on": sorted(r.chip_id for r in refs)},
        "early_stopping_on": None,
        "threshold": threshold,
        **point["summary"],
        "epochs": 0,
        "early_stopped": False,
        "trainable_params": 0,
        "budget": {"method": "calibrate", "calibrate_tolerance": tolerance},
        "normalization": sorted(datamodule.presets),
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / ADAPT_FILE, summary)
    return AdaptResult(out, summary, metrics)


def _set_operating_point(
    model: Any, cfg: RunConfig, datamodule: FewShotDataModule, anchor: float, tolerance: float, progress: bool
) -> dict[str, Any]:
    """Each output's threshold on the datamodule's val chips (every labelled chip for ``calibrate``)
    moved to 0.5: of the thresholds within `tolerance` F1 of the best, the one nearest `anchor`.
    Returns the run's new metrics and the summary lines (F1 before and after, best on the chips)."""
    from floodlora.metrics import best_f1_threshold
    from floodlora.training.engine import (
        _test,
        _trainer,
        calibrate_outputs_on,
        calibrated_chips,
        precision_choice,
        resolve_accelerator,
        split_report,
    )
    from floodlora.training.task import FloodSegmentationTask

    model.eval()
    tcfg = copy.deepcopy(cfg.train)
    choice = precision_choice(tcfg, resolve_accelerator(tcfg))
    task = FloodSegmentationTask(model, tcfg)
    trainer = _trainer(tcfg, None, [], progress, fit=False, precision=choice.precision)
    chips = _test(trainer, task, datamodule.val_dataloader())
    before = chips.report(anchor, per_chip=False)["f1"]
    calibration = calibrate_outputs_on(model, chips, single=True, tolerance=tolerance, anchor=anchor)
    if not calibration:
        hist = chips.total()
        missing = "flood pixel (mask 1)" if int(hist[1].sum()) == 0 else "dry pixel (mask 0)"
        raise DataError(
            f"{', '.join(cfg.data.roots)}: the labelled chips hold no {missing}, and an operating point "
            "needs both (label dry areas too: floodlora labels --dry or --aoi)"
        )
    chips = calibrated_chips(chips, calibration, single=True)
    best_threshold, best_f1 = best_f1_threshold(chips.total())
    metrics = {
        "best_threshold": 0.5,  # each output's chosen operating point now sits at 0.5
        "threshold_source": "calibrated on every labelled chip",
        "calibrated_chips": split_report(chips, 0.5, 0.5),
        "output_calibration": calibration,
    }
    summary = {
        "f1_before": before,
        "f1": metrics["calibrated_chips"]["f1"],
        "f1_best": best_f1,
        "best_threshold_on_chips": best_threshold,
        "output_calibration": calibration,
    }
    return {"metrics": metrics, "summary": summary}


def _save_model_run(out: Path, cfg: RunConfig, model: Any, presets: dict[str, Any]) -> None:
    """Store `model` as the run `out`, under the strategy it has now (its weights decide)."""
    from floodlora.runs import save_run

    cfg = copy.deepcopy(cfg)
    cfg.model.strategy = model.strategy
    save_run(out, cfg, model, presets)


def _calibrate_after(
    out: Path,
    opts: AdaptOptions,
    base_norm: str,
    progress: bool,
    pseudo: PseudoLabels | None = None,
    tolerance: float | None = None,
) -> dict[str, Any] | None:
    """The fine-tuned run `out` with each output's operating point set on every labelled chip
    (trained and held back; with `pseudo`, their pseudo-labels), anchored at the threshold
    fine-tuning chose; weights saved again. None (with a warning) where the chips label no dry
    pixel: nothing to set it with."""
    import warnings

    from floodlora.runs import load_run

    loaded = load_run(out)
    calibrate = replace(opts, method="calibrate")
    datamodule = FewShotDataModule(
        loaded.config.data, calibrate, pseudo, base_normalization=base_norm, presets=loaded.presets or None
    )
    datamodule.setup("fit")
    tolerance = opts.tolerance_for("fine-tune") if tolerance is None else tolerance
    try:
        point = _set_operating_point(
            loaded.model, loaded.config, datamodule, loaded.threshold, tolerance, progress
        )
    except DataError as err:  # flood-only labels: keep the threshold fine-tuning chose
        warnings.warn(f"operating point not set after fine-tuning: {err}", stacklevel=2)
        return None
    _save_model_run(out, loaded.config, loaded.model, datamodule.presets)
    summary = {"from_threshold": loaded.threshold, "tolerance": tolerance, **point["summary"]}
    return {"metrics": point["metrics"], "summary": summary}


def _save_merged(out: Path, cfg: RunConfig, model: Any, presets: dict[str, Any]) -> None:
    """A merged FROM stays standalone: fold the new adapters in and store every weight."""
    from floodlora.models.strategies import strategy_of

    strategy_of(model).standalone(model)
    _save_model_run(out, cfg, model, presets)


def format_summary(summary: dict[str, Any]) -> str:
    """The lines `floodlora adapt` prints."""
    src = summary["from"]
    chips = summary["chips"]
    if summary.get("method") == "calibrate":
        n = len(chips["calibrated_on"])
        moved = ", ".join(f"{k} {v['threshold']:.2f}" for k, v in summary["output_calibration"].items())
        return "\n".join(
            [
                f"calibrated from {src['kind']} {src['path']} (sha256 {src['sha256'][:16]})",
                f"operating point set on all {n} labelled chips (chosen thresholds: {moved}; now 0.5; "
                f"tolerance {summary['budget'].get('calibrate_tolerance', 0.0):g})",
                f"F1 on those chips {100 * summary['f1_before']:.1f} -> {100 * summary['f1']:.1f} "
                f"(best one threshold {100 * summary.get('f1_best', summary['f1']):.1f}), "
                f"wall {summary['wall_seconds']:.0f} s",
            ]
        )
    held = len(chips["held_back"])
    scored = f"the {held} held-back chips" if held else "the training chips (none held back)"
    lines = [
        f"adapted from {src['kind']} {src['path']} (sha256 {src['sha256'][:16]})",
        f"chips: {len(chips['train'])} trained, {held} held back; early stopping on {scored}",
        f"batches of {summary['samples']['batch_size']} x {summary['samples']['crop_size']} px",
        f"F1 {100 * summary['f1']:.1f} on {scored} at threshold {summary['fine_tune_threshold']:.2f}",
        f"{summary['epochs']} epochs{' (early stop)' if summary['early_stopped'] else ''}, "
        f"{summary['trainable_params']:,} trainable params, wall {summary['wall_seconds']:.0f} s",
    ]
    after = summary.get("calibrated_after")
    if after:
        moved = ", ".join(f"{k} {v['threshold']:.2f}" for k, v in after["output_calibration"].items())
        lines.append(
            f"then operating point set on all {held + len(chips['train'])} labelled chips (chosen "
            f"thresholds: {moved}; now 0.5): F1 on them {100 * after['f1_before']:.1f} -> "
            f"{100 * after['f1']:.1f}"
        )
    return "\n".join(lines)
