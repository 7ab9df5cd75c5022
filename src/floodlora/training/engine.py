"""Train, evaluate and sweep: the functions behind `floodlora train / evaluate / sweep`.

Each is callable in-process (the demo does), returns plain data, and leaves the run directory of
docs/architecture.md behind. Lightning does the loops, device placement, DDP and checkpointing;
this module only wires the recipe together and decides what is written where:

    RUN_DIR/config.yaml, weights.safetensors, base.json   (floodlora.runs.save_run)
    RUN_DIR/metrics.json      val / test (/ ood) reports at threshold 0.5 and the run's (chosen on val)
    RUN_DIR/accounting.json   memory, parameters, throughput, time-to-best-F1, wall time
    RUN_DIR/checkpoints/      Lightning checkpoints: last.ckpt (for --resume), best.ckpt (lowest val loss)
    RUN_DIR/logs/metrics.csv  per-step / per-epoch CSV log (always)
    RUN_DIR/logs/tensorboard/ TensorBoard event files (train.logger: tensorboard)
    RUN_DIR/mlruns/           MLflow file store unless train.tracking_uri names another (train.logger: mlflow)
"""

from __future__ import annotations

import copy
import datetime as dt
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from floodlora.config import DataConfig, RunConfig, TrainConfig
from floodlora.errors import ConfigError, FloodLoraError
from floodlora.io import atomic_write_json
from floodlora.metrics import operating_threshold
from floodlora.training.accounting import OutOfMemoryError, ResourceAccounting, is_out_of_memory
from floodlora.training.feature_cache import (
    check_feature_cache_config,
    feature_cache_plan,
    prepare_feature_cache,
)

#: model.prior_fit -> what accounting.json says the prior was fitted on
PRIOR_FIT_TEXT: dict[str, str] = {
    "crops": "training crops",
    "whole": "whole training chips",
    "whole-context": "whole training chips for the context outputs, training crops for the others",
}

METRICS_FILE = "metrics.json"
ACCOUNTING_FILE = "accounting.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
FEATURE_CACHE_DIR = "feature_cache"
EVAL_SPLITS: tuple[str, ...] = ("train", "val", "test", "ood", "all")


@dataclass
class TrainResult:
    """What a training run produced (the same content as the files in `run_dir`)."""

    run_dir: Path
    metrics: dict[str, Any]
    accounting: dict[str, Any]
    config: RunConfig
    is_global_zero: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Lightning plumbing
# --------------------------------------------------------------------------------------------------


def resolve_accelerator(cfg: TrainConfig) -> str:
    if cfg.accelerator != "auto":
        return cfg.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def precision_choice(cfg: TrainConfig, accelerator: str, purpose: str = "train") -> Any:
    """`train.precision` resolved for `accelerator` (floodlora.precision.PrecisionChoice, with its reason);
    `purpose="predict"` for forward passes only (evaluate), which `auto` may run in bf16 on CPU."""
    from floodlora.precision import cpu_bf16_flags
    from floodlora.precision import resolve_precision as _resolve

    choice = _resolve(cfg.precision, accelerator, purpose)
    if accelerator == "cpu" and choice.requested.startswith("bf16") and not cpu_bf16_flags():
        warnings.warn(
            "bf16 on a CPU without avx512_bf16 / amx_bf16 is very slow; consider train.precision: 32",
            stacklevel=2,
        )
    return choice


def resolve_precision(cfg: TrainConfig, accelerator: str) -> str:
    """`auto`: bf16-mixed on CUDA and on CPUs with fast bf16 matmul, fp32 elsewhere (Lightning name)."""
    return str(precision_choice(cfg, accelerator).precision)


def _quiet_lightning() -> None:
    """Keep the console to the progress bar: Lightning's info banners add nothing for users."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (
        ".*does not have many workers.*",
        ".*number of training batches.*smaller than the logging interval.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*is not a recognized .* version.*",
        ".*`srun` command is available.*",
        ".*sync_dist=True.*",
        ".*Experiment logs directory .* exists and is not empty.*",
        ".*module\\(s\\) in eval mode at the start of training.*",  # a frozen encoder stays in eval mode
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # Lightning's own use of torch internals
    ):
        warnings.filterwarnings("ignore", message=msg)


def make_loggers(cfg: TrainConfig, run_dir: Path) -> list[Any]:
    """Lightning's CSV logger (the run directory's own record), plus the tracker `train.logger` names.

    TensorBoard writes RUN_DIR/logs/tensorboard; MLflow logs to `train.tracking_uri`, by default a
    file store in RUN_DIR/mlruns (MLflow >= 3 keeps that backend in maintenance mode and wants
    MLFLOW_ALLOW_FILE_STORE set for it, which is done here for local paths only).
    """
    import os

    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(str(run_dir), name="", version="logs")]
    if cfg.logger == "csv":
        return loggers
    if cfg.logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "train.logger: tensorboard needs TensorBoard: pip install 'floodlora[tensorboard]'"
            ) from None
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(run_dir / "logs"), name="", version="tensorboard"))
        return loggers
    if cfg.logger == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("train.logger: mlflow needs MLflow: pip install 'floodlora[mlflow]'") from None
        from lightning.pytorch.loggers import MLFlowLogger

        uri = cfg.tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        local = "://" not in uri and not uri.startswith("databricks")
        if local:
            uri = Path(uri).resolve().as_uri()
        if local or uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        loggers.append(MLFlowLogger(experiment_name=cfg.experiment, run_name=run_dir.name, tracking_uri=uri))
        return loggers
    raise ConfigError(f"train.logger: {cfg.logger!r} is not one of csv, tensorboard, mlflow")


def flat_params(config: RunConfig) -> dict[str, Any]:
    """The resolved config as flat ``section.key`` hyperparameters for the experiment trackers."""
    out: dict[str, Any] = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            out[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return out


def _trainer(
    cfg: TrainConfig,
    run_dir: Path | None,
    callbacks: list[Any],
    progress: bool,
    fit: bool,
    loggers: list[Any] | None = None,
    precision: str | None = None,
) -> Any:
    import lightning.pytorch as pl

    _quiet_lightning()
    accelerator = resolve_accelerator(cfg)
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks = [*callbacks, RichProgressBar(leave=True)]
    kwargs: dict[str, Any] = {}
    if fit:
        kwargs.update(
            max_epochs=cfg.max_epochs,
            logger=(loggers or make_loggers(cfg, run_dir)) if run_dir else False,
            log_every_n_steps=1,
            limit_train_batches=cfg.limit_train_batches,
            limit_val_batches=cfg.limit_val_batches,
            num_sanity_val_steps=0,
            max_time=dt.timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        )
    else:
        kwargs.update(logger=False, enable_checkpointing=False)
    return pl.Trainer(
        accelerator=accelerator,
        devices=cfg.devices if fit else 1,
        num_nodes=cfg.num_nodes if fit else 1,
        precision=precision or resolve_precision(cfg, accelerator),  # type: ignore[arg-type]
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(run_dir) if run_dir else None,
        **kwargs,
    )


def _test(trainer: Any, task: Any, loader: Any) -> Any:
    """Run Lightning's test loop; returns the task's gathered per-chip confusion."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*view\(s\) .* missing.*")
        trainer.test(task, dataloaders=loader, verbose=False)
    return task.test_chips


def calibrate_outputs_on(
    model: Any, chips: Any, single: bool = False, tolerance: float = 0.0, anchor: float | None = None
) -> dict[str, dict[str, float]]:
    """Per output (label kind) with flood and dry pixels among `chips`: its operating threshold on them
    (F1-optimal, or with `tolerance` the highest within it of the best:
    :func:`~floodlora.metrics.operating_threshold`; with `anchor`, the one nearest it within
    `tolerance` of the best), moved to 0.5
    (:meth:`FloodSegmentor.calibrate_outputs`). Returns each moved output's threshold and logit
    offset.

    Training calls it on val chips for models with several outputs (one run threshold cannot fit
    every kind); ``adapt --method calibrate`` with `single` also for a one-output model, whose one
    channel answers every chip. An output whose chips label no dry pixel is left where it is: with
    no false alarm to count, every threshold down to 0 would look as good.
    """
    if len(model.outputs) < 2 and not single:
        return {}
    kinds = model.outputs if len(model.outputs) > 1 else [None]
    thresholds = {}
    for kind in kinds:
        hist = chips.total(kind)
        if int(hist[1].sum()) > 0 and int(hist[0].sum()) > 0:  # flood and dry pixels among the chips
            thresholds[kind or model.outputs[0]], _ = operating_threshold(hist, tolerance, anchor)
    offsets = model.calibrate_outputs(thresholds)
    return {k: {"threshold": thresholds[k], "logit_offset": round(offsets[k], 4)} for k in thresholds}


def calibrated_chips(chips: Any, calibration: Mapping[str, Mapping[str, float]], single: bool = False) -> Any:
    """`chips` scored before :func:`calibrate_outputs_on` as the calibrated model would score them,
    without a second forward pass (:meth:`ChipConfusion.moved_to_half`): each output's applied
    threshold is read back from its logit offset (the model clamps thresholds near 0 and 1)."""
    applied = {kind: float(torch.sigmoid(torch.tensor(c["logit_offset"]))) for kind, c in calibration.items()}
    if single and len(applied) == 1:  # a one-output model: its channel answers every chip
        return chips.moved_to_half({}, every_chip=next(iter(applied.values())))
    return chips.moved_to_half(applied)


def split_report(chips: Any, threshold: float = 0.5, best_threshold: float | None = None) -> dict[str, Any]:
    """Metrics at `threshold` (+ per event / per chip) and, when given, at the run's threshold.

    ``oracle`` is the best F1 any one threshold reaches on these chips, found with their own labels:
    never a result, but it tells a model that ranks pixels badly from one whose operating point
    (learned on other events) does not fit this event. ``event_otsu`` scores each event at Otsu's
    threshold on its own predicted probabilities (labels unused), an operating point a responder
    can set on a new event without labels. ``f1_curve`` holds F1 at every grid threshold (0.00,
    0.01, ..., 1.00), for all chips and per label kind, so that another rule for the operating point
    can be scored on a finished run without running it again.
    """
    from floodlora.metrics import best_f1_threshold, f1_curve

    out = chips.report(threshold)
    oracle_t, oracle_f1 = best_f1_threshold(chips.total())
    out["oracle"] = {"threshold": oracle_t, "f1": oracle_f1}
    kinds = sorted({rec.label_kind for rec in chips.chips.values()})
    hists = {"all": chips.total(), **{kind: chips.total(kind) for kind in kinds}}
    out["f1_curve"] = {name: [round(float(v), 4) for v in f1_curve(h)[1]] for name, h in hists.items()}
    out["event_otsu"] = chips.event_otsu_report()
    if best_threshold is not None:
        best = chips.report(best_threshold, per_chip=False)
        out["best_threshold"] = best_threshold
        out["at_best_threshold"] = {k: v for k, v in best.items() if k not in ("n_chips", "n_pixels")}
    return out


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------


def _check_out_dir(run_dir: Path, resume: bool) -> Path | None:
    last = run_dir / CHECKPOINT_DIR / LAST_CKPT
    if resume:
        if not last.is_file():
            raise FloodLoraError(f"{run_dir}: nothing to resume ({CHECKPOINT_DIR}/{LAST_CKPT} not found)")
        _check_resume_checkpoint(last)
        return last
    if (run_dir / METRICS_FILE).exists() or last.exists():
        raise FloodLoraError(
            f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out"
        )
    return None


def _check_resume_checkpoint(path: Path) -> None:
    """Refuse a truncated or foreign last.ckpt with one line, before Lightning unpickles it."""
    from floodlora.models.clay import load_torch_file

    raw = load_torch_file(path)  # memory-mapped: cheap even for a large checkpoint
    if not isinstance(raw, dict) or "state_dict" not in raw or "epoch" not in raw:
        raise FloodLoraError(
            f"{path}: not a Lightning training checkpoint (no state_dict/epoch); cannot resume"
        )


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = False,
    *,
    model: Any = None,
    datamodule: Any = None,
    log: Callable[[str], None] | None = None,
    score: Sequence[str] = ("test", "ood"),
) -> TrainResult:
    """Train `config` into `out_dir`, evaluate val / test (/ ood), write the run directory.

    `model` (a ready FloodSegmentor, e.g. a loaded run to fine-tune further) and `datamodule` (a
    FloodDataModule with its own splits or presets) replace the ones built from `config`;
    `floodlora adapt` passes both. `log` receives one-line notes for the training log (the precision
    chosen and why). `score` names the splits scored after training besides val (a benchmark that
    reads only the held-out events skips the test pass).

    Raises :class:`OutOfMemoryError` when the run exceeds the accelerator's memory or
    `train.memory_cap_gb` (its `.accounting` holds what was measured before that).
    """
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from floodlora.config import save_config
    from floodlora.data.datamodule import FloodDataModule
    from floodlora.models.factory import build_segmentor
    from floodlora.models.registry import checkpoint_normalization
    from floodlora.runs import save_run
    from floodlora.training.task import FloodSegmentationTask

    t_start = time.perf_counter()
    run_dir = Path(out_dir)
    ckpt_path = _check_out_dir(run_dir, resume)
    if not config.data.roots:
        raise ConfigError("no training data: pass --data PATH (or data.roots in the config)")
    tcfg = config.train
    check_feature_cache_config(config)
    seed_everything(tcfg.seed, workers=True, verbose=False)
    if datamodule is None:
        datamodule = FloodDataModule(
            config.data, base_normalization=checkpoint_normalization(config.model.checkpoint)
        )
    datamodule.setup("fit")
    prior_fit: dict[str, Any] | None = None
    if model is None:
        model = build_segmentor(config.model, config.data.views, config.data.bands, config.data.crop_size)
        if model.prior is not None:  # a fresh model starts from a threshold fitted on its training chips
            from floodlora.training.pixel_prior import fit_pixel_prior

            fit_on = config.model.prior_fit
            whole = datamodule.whole_chips("train") if fit_on != "crops" else None
            prior_fit = fit_pixel_prior(
                model, whole if fit_on == "whole" else datamodule.dataset("train"), seed=config.data.seed,
                log=log, kinds=config.model.prior_kinds, context_kinds=config.model.prior_context_kinds,
                context_dataset=whole if fit_on == "whole-context" else None,
            )  # fmt: skip
            prior_fit["fitted_on"] = PRIOR_FIT_TEXT[fit_on]
    accelerator = resolve_accelerator(tcfg)
    precision = precision_choice(tcfg, accelerator)
    if log is not None:
        log(f"precision: {precision.precision} ({precision.requested}: {precision.reason})")
    fit_data: Any = datamodule
    cache_plan = feature_cache_plan(config, datamodule)
    if log is not None and "reason" in cache_plan:
        log(f"feature cache: {'on' if cache_plan['use'] else 'off'} ({cache_plan['reason']})")
    if cache_plan["use"]:  # frozen encoder: encode each chip once, train the decoder from disk
        fit_data = prepare_feature_cache(
            config, model, datamodule, run_dir / FEATURE_CACHE_DIR,
            device="cuda" if accelerator in ("gpu", "cuda") else "cpu",
            precision=precision.precision,
        )  # fmt: skip
    if tcfg.compile:
        from floodlora.models.factory import compile_encoder

        compile_encoder(model)
    task = FloodSegmentationTask(model, tcfg)
    accounting = ResourceAccounting(tcfg.memory_cap_gb)
    ckpt_dir = str(run_dir / CHECKPOINT_DIR)
    # Two checkpoints: the lowest val loss (the weights the run keeps) and the latest (for --resume;
    # Lightning's save_last only follows saves of the monitored checkpoint).
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    early = EarlyStopping(monitor="val_loss", mode="min", patience=tcfg.early_stopping_patience)
    callbacks = [accounting, checkpoint, latest, early, LearningRateMonitor(logging_interval="epoch")]
    if tcfg.weight_averaging == "swa":  # val, checkpoints and the kept weights see the average
        from floodlora.training.task import StoredWeightAveraging

        callbacks.append(StoredWeightAveraging())
    loggers = make_loggers(tcfg, run_dir)
    trainer = _trainer(
        tcfg, run_dir, callbacks, progress, fit=True, loggers=loggers, precision=precision.precision
    )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        _keep_previous_log(run_dir)
        params = flat_params(config)
        for logger in loggers:
            logger.log_hyperparams(params)
    try:
        trainer.fit(
            task, datamodule=fit_data, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True
        )
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        summary = {
            **accounting.summary(),
            "status": "oom",
            "error": str(err).splitlines()[0][:300],
            "precision": precision.to_dict(),
        }
        if trainer.is_global_zero:
            atomic_write_json(run_dir / ACCOUNTING_FILE, summary)
        oom = (
            err
            if isinstance(err, OutOfMemoryError)
            else OutOfMemoryError(f"out of memory: {summary['error']}")
        )
        oom.accounting = summary  # type: ignore[attr-defined]
        raise oom from None
    if trainer.interrupted:
        raise KeyboardInterrupt
    _restore_best(task, checkpoint.best_model_path)

    # Evaluate with the same trainer, so that DDP ranks share the work and the results.
    val_chips = _test(trainer, task, datamodule.val_dataloader())
    tolerance = tcfg.threshold_tolerance
    calibration = calibrate_outputs_on(model, val_chips, tolerance=tolerance)
    if calibration:  # val as the calibrated model scores it: every output at its own operating point
        val_chips = calibrated_chips(val_chips, calibration)
    threshold, _ = operating_threshold(val_chips.total(), tolerance)
    metrics: dict[str, Any] = {"best_threshold": threshold, "val": split_report(val_chips, 0.5, threshold)}
    if calibration:
        metrics["output_calibration"] = calibration
    for split in ("test", "ood"):
        if split in score and datamodule.splits.get(split):
            loader = datamodule.test_dataloader() if split == "test" else datamodule.ood_dataloader()
            metrics[split] = split_report(_test(trainer, task, loader), 0.5, threshold)
    summary = {
        **accounting.summary(),
        "status": "ok",
        "wall_seconds": time.perf_counter() - t_start,
        "early_stopped": bool(early.stopped_epoch),
        "world_size": int(trainer.world_size),
        "precision": precision.to_dict(),
        "data": datamodule.describe(),
    }
    if cache_plan["use"]:
        summary["feature_cache"] = fit_data.describe()
    if tcfg.feature_cache:
        summary["feature_cache_plan"] = cache_plan
    if prior_fit is not None:
        summary["pixel_prior"] = prior_fit
    if trainer.is_global_zero:
        save_run(run_dir, config, model, datamodule.presets)
        atomic_write_json(run_dir / METRICS_FILE, metrics)
        atomic_write_json(run_dir / ACCOUNTING_FILE, summary)
    return TrainResult(run_dir, metrics, summary, config, trainer.is_global_zero)


def _keep_previous_log(run_dir: Path) -> None:
    """Lightning's CSV logger starts a fresh file; keep the earlier sessions' log of a resumed run."""
    log = run_dir / "logs" / "metrics.csv"
    if log.is_file():
        n = len(list(log.parent.glob("metrics.session-*.csv"))) + 1
        log.rename(log.with_name(f"metrics.session-{n}.csv"))


def _restore_best(task: Any, best_path: str) -> None:
    """Load the lowest-val-loss weights (the checkpoint EarlyStopping's monitor chose)."""
    if not best_path or not Path(best_path).is_file():
        return
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    from floodlora.models.strategies import strategy_of

    result = task.load_state_dict(state, strict=False)
    missing = strategy_of(task.model).missing_stored(result.missing_keys, prefix="model.")
    if missing or result.unexpected_keys:
        raise FloodLoraError(
            f"{best_path}: checkpoint does not fit the model ({(missing or result.unexpected_keys)[:3]})"
        )


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def _eval_loader(
    data: DataConfig, split: str, presets: dict[str, Any] | None = None, base_normalization: str = "clay-v1.5"
) -> Any:
    from torch.utils.data import DataLoader

    from floodlora.data.datamodule import FloodDataModule, FloodDataset, collate

    if split not in EVAL_SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    data = copy.deepcopy(data)
    data.flood_sampling, data.balance_sources = 0.0, False  # score every chip once, not weighted draws
    dm = FloodDataModule(data, presets=presets, base_normalization=base_normalization)
    dm.setup("test")
    if split == "all":
        refs = [r for name in ("train", "val", "test", "ood") for r in dm.splits[name]]
        if not refs:
            raise FloodLoraError(f"{', '.join(data.roots)}: no labelled chips to evaluate")
        ds = FloodDataset(refs, dm.presets, data.views, data.bands, crop_size=None, seed=data.seed)
        return DataLoader(ds, batch_size=data.batch_size, shuffle=False, collate_fn=collate)
    if not dm.splits.get(split):
        sizes = ", ".join(f"{k} {len(v)}" for k, v in dm.splits.items())
        raise FloodLoraError(
            f"{', '.join(data.roots)}: the {split} split is empty ({sizes}); try --split all"
        )
    return {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader,
            "ood": dm.ood_dataloader}[split]()  # fmt: skip


def evaluate_run(
    run_dir: str | Path,
    roots: list[str] | None = None,
    format: str | None = None,
    split: str = "test",
    threshold: float | None = None,
    checkpoint: str | None = None,
    progress: bool = False,
    json_out: str | Path | None = None,
    views: Sequence[str] | None = None,
    stats_from_data: bool = False,
    precision: str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a split of its own data or of other data (`roots`, `format`).

    `views` restricts which of the run's views are read (e.g. ``["post"]``): the others are then
    missing for the model, which measures its robustness to an absent pre-event or orbit view.
    The chips are normalised with the run's stored per-source presets; 8-bit chips of a source the
    run never saw need `stats_from_data` (statistics of the chips being scored).

    Returns (and optionally writes) accuracy, precision, recall, f1, iou, dice as fractions at
    `threshold` (default: the run's threshold, chosen on val), the per-event and per-chip
    breakdowns, and the same at the other of {0.5, the run's}. Views the run was trained on but
    the data lacks are listed in `missing_views`. `precision` overrides the run's `train.precision`
    for the forward passes (`auto` then decides per machine, as `predict` does; the choice is in the
    report).
    """
    from floodlora.models.registry import checkpoint_normalization
    from floodlora.runs import load_run
    from floodlora.training.task import FloodSegmentationTask

    loaded = load_run(run_dir, checkpoint=checkpoint)
    data = copy.deepcopy(loaded.config.data)
    if roots:
        data.roots = [str(r) for r in roots]
        data.format = format
    elif format:
        data.format = format
    if views is not None:
        unknown = sorted(set(views) - set(data.views))
        if unknown or not views:
            raise ConfigError(f"--views {','.join(views)}: the run has views {','.join(data.views)}")
        data.views = [v for v in data.views if v in views]
    data.stats_from_data = stats_from_data
    base_norm = checkpoint_normalization(loaded.base.get("checkpoint", loaded.config.model.checkpoint))
    loader = _eval_loader(data, split, loaded.presets or None, base_norm)
    best = loaded.best_threshold
    chosen = threshold if threshold is not None else loaded.threshold
    task = FloodSegmentationTask(loaded.model, loaded.config.train)
    tcfg = copy.deepcopy(loaded.config.train)
    tcfg.devices, tcfg.num_nodes = 1, 1
    if precision is not None:
        tcfg.precision = precision
    # The run's own precision scores as training scored it; an explicit `precision` (auto included)
    # is a request for forward passes only, which `auto` may run in bf16 on a fast-bf16 CPU.
    purpose = "predict" if precision is not None else "train"
    choice = precision_choice(tcfg, resolve_accelerator(tcfg), purpose=purpose)
    trainer = _trainer(tcfg, None, [], progress, fit=False, precision=choice.precision)
    t0 = time.perf_counter()
    chips = _test(trainer, task, loader)
    report = split_report(chips, chosen, best)
    if chosen != 0.5:
        at_half = chips.report(0.5, per_chip=False)
        report["at_threshold_0.5"] = {k: v for k, v in at_half.items() if k not in ("n_chips", "n_pixels")}
    report.update(
        threshold_source="--threshold" if threshold is not None else loaded.threshold_source,
        run_dir=str(run_dir),
        split=split,
        data={"roots": data.roots, "format": data.format},
        missing_views=sorted(task.missing_views),
        numeric_precision=choice.to_dict(),  # "precision" is the metric
        seconds=time.perf_counter() - t0,
    )
    if json_out is not None:
        atomic_write_json(json_out, report)
    return report


def table2_row(report: dict[str, Any], label: str = "") -> str:
    """A Table-2 style Markdown row: Accuracy, Precision, Recall, F1, IoU, Dice in %."""
    cells = [f"{100 * report[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1", "iou", "dice")]
    return f"| {label} | " + " | ".join(cells) + " |"


TABLE2_HEADER = (
    "| threshold | Accuracy | Precision | Recall | F1 | IoU | Dice |\n|---|---|---|---|---|---|---|"
)


def format_table2(report: dict[str, Any]) -> str:
    """The evaluate command's printout: one row at 0.5, one at the run's threshold."""
    source = report.get("threshold_source", "")
    label = f"{report['threshold']:.2f}" + (f" ({source})" if source else "")
    lines = [TABLE2_HEADER, table2_row(report, label)]
    if "at_best_threshold" in report and report["best_threshold"] != report["threshold"]:
        lines.append(table2_row(report["at_best_threshold"], f"{report['best_threshold']:.2f} (run, val)"))
    if "at_threshold_0.5" in report:
        lines.append(table2_row(report["at_threshold_0.5"], "0.50"))
    if report.get("missing_views"):
        lines.append(f"\nmissing views (predicted without them): {', '.join(report['missing_views'])}")
    return "\n".join(lines)
