"""Classical flood-mapping baselines, scored exactly like the models.

What responders use today, without any training data: open water is dark in SAR (specular
reflection), so **Otsu** thresholding of post-event backscatter separates it from land; when a
pre-event image exists, **change detection** thresholds the post - pre difference, which ignores
permanent water (dark in both) and is the classical rapid-mapping product.

* Values. dB chips (Sen1Floods11, C2S, synthetic) are thresholded in dB and the change image is the
  dB difference (= the log-ratio of linear power); linear chips are converted to dB first. OMBRIA and
  ETCI chips are 8-bit rescaled (``scaled-uint8``, scaling unknown), so Otsu works on those scaled
  values and change detection on the difference of the scaled values (monotone in dB only if the
  rescaling was linear in dB, which their authors do not state).
* Band. ``vv``, ``vh`` or ``both`` (the mean of the bands present, i.e. the geometric mean of linear
  power in dB units); a chip without the requested band is an error, ``both`` uses what is there.
* Threshold (``mode``). ``chip``: Otsu per chip; ``event``: one Otsu threshold per event from the
  pooled histogram of the evaluated chips; ``fitted``: the threshold maximising F1 on the training
  split's pixels (supervised, the strongest classical reference).
* Scoring. The same splits (:func:`floodlora.data.datamodule.assign_splits`), the same chip filter
  (``max_nodata_fraction``) and the same metrics (:class:`floodlora.metrics.ChipConfusion`)
  as ``floodlora evaluate``: nodata pixels (invalid imagery or label 255) are never scored.
* **Split-based thresholding** (``split``, :mod:`floodlora.data.split_threshold`): the label-free
  mapper of the operational services, one fit per event from the tiles whose histogram is bimodal,
  new water where a pre-event view exists. It is also the teacher of ``adapt --method self``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from floodlora.data.sample import MASK_FLOOD, MASK_NODATA, Sample
from floodlora.errors import ConfigError, DataError
from floodlora.metrics import otsu_from_histogram

if TYPE_CHECKING:
    from floodlora.config import DataConfig
    from floodlora.data.sources import ChipRef

METHODS: tuple[str, ...] = ("otsu", "change")  # thresholds of one image (see `mode`)
ALL_METHODS: tuple[str, ...] = (*METHODS, "split")  # plus split-based thresholding (its own fit)
BAND_CHOICES: tuple[str, ...] = ("vv", "vh", "both")
MODES: tuple[str, ...] = ("chip", "event", "fitted")
SPLITS: tuple[str, ...] = ("train", "val", "test", "ood", "all")

__all__ = [
    "ALL_METHODS",
    "BAND_CHOICES",
    "METHODS",
    "MODES",
    "Grid",
    "baseline_image",
    "fit_threshold",
    "load_samples",
    "otsu_from_histogram",
    "otsu_threshold",
    "predict_baseline",
    "read_samples",
    "run_baseline",
    "run_split_baseline",
    "select_refs",
    "subsample",
]


# --------------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A fixed histogram grid, so per-chip, pooled and fitted thresholds are computed the same way."""

    lo: float
    width: float
    n: int

    @classmethod
    def for_units(cls, units: str, change: bool) -> Grid:
        """0.5 steps for 8-bit scaled values (their means and differences are half-integers), 0.05 dB."""
        if units == "scaled-uint8":
            return cls(-256.25, 0.5, 1026) if change else cls(-0.25, 0.5, 513)
        return cls(-80.0, 0.05, 3200) if change else cls(-80.0, 0.05, 2400)

    @property
    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.n + 1)

    def index(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((values - self.lo) / self.width), 0, self.n - 1).astype(np.int64)

    def histogram(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.index(values[np.isfinite(values)]), minlength=self.n)


def otsu_threshold(values: np.ndarray, grid: Grid | None = None, bins: int = 256) -> float:
    """Otsu threshold of the finite `values` (on `grid`, or `bins` bins spanning their range)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise DataError("Otsu threshold of an empty image (no valid pixels)")
    if grid is None:
        lo, hi = float(v.min()), float(v.max())
        width = (hi - lo) / bins if hi > lo else 1.0
        grid = Grid(lo, width, bins)
    return otsu_from_histogram(grid.histogram(v), grid.edges)


def f1_threshold_from_histograms(flood: np.ndarray, dry: np.ndarray, edges: np.ndarray) -> float:
    """The cut t (flood = value < t) maximising pixel F1, from per-class histograms on one grid."""
    tp = np.concatenate([[0.0], np.cumsum(flood, dtype=np.float64)])
    fp = np.concatenate([[0.0], np.cumsum(dry, dtype=np.float64)])
    fn = tp[-1] - tp
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(edges[int(np.argmax(f1))])


# --------------------------------------------------------------------------------------------------
# images and predictions
# --------------------------------------------------------------------------------------------------


def _to_db_if_linear(arr: np.ndarray, units: str) -> np.ndarray:
    if units == "linear":
        from floodlora.data.sar import to_db

        return to_db(arr)
    return arr


def _band_image(sample: Sample, view: str, band: str) -> np.ndarray:
    bands = sample.views[view]
    if band == "both":
        present = [b for b in ("vv", "vh") if b in bands]
        if not present:
            raise DataError(f"{sample.meta.chip_id}: view {view} has no vv/vh band")
        stack = [_to_db_if_linear(bands[b], sample.meta.units).astype(np.float64) for b in present]
        return np.mean(stack, axis=0)
    if band not in bands:
        raise DataError(
            f"{sample.meta.chip_id}: no {band} band in view {view} (it has {', '.join(bands)}); "
            "use --band both or a band the source has"
        )
    return _to_db_if_linear(bands[band], sample.meta.units).astype(np.float64)


def _view(sample: Sample, prefix: str) -> str:
    """``post`` or the first orbit-specific post view (``post_asc``...) the chip has."""
    for name in (prefix, f"{prefix}_asc", f"{prefix}_desc"):
        if name in sample.views:
            return name
    raise DataError(
        f"{sample.meta.chip_id}: no {prefix}-event view (it has {', '.join(sample.views)})"
        + (
            "; change detection needs a pre-event image, use otsu for post-only data"
            if prefix == "pre"
            else ""
        )
    )


def baseline_image(sample: Sample, method: str, band: str = "both") -> np.ndarray:
    """The image a baseline thresholds (low = flood): post backscatter, or post - pre for change.

    NaN where the chip is invalid or the label is nodata, so those pixels never move a threshold.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown baseline {method!r}; expected one of {', '.join(METHODS)}")
    if band not in BAND_CHOICES:
        raise ConfigError(f"unknown band {band!r}; expected one of {', '.join(BAND_CHOICES)}")
    post = _band_image(sample, _view(sample, "post"), band)
    img = post if method == "otsu" else post - _band_image(sample, _view(sample, "pre"), band)
    bad = ~sample.valid | ~np.isfinite(img)
    if sample.mask is not None:
        bad |= sample.mask == MASK_NODATA
    return np.where(bad, np.nan, img)


def predict_baseline(sample: Sample, method: str, threshold: float, band: str = "both") -> np.ndarray:
    """uint8 flood map (1 where the baseline image < threshold); invalid pixels are 0 and unscored."""
    img = baseline_image(sample, method, band)
    with np.errstate(invalid="ignore"):
        return (img < threshold).astype(np.uint8)


def fit_threshold(samples: Iterable[Sample], method: str, band: str = "both") -> float:
    """The threshold maximising F1 over all labelled valid pixels of `samples` (the training split)."""
    grid: Grid | None = None
    flood = dry = None
    for s in samples:
        if s.mask is None:
            continue
        img = baseline_image(s, method, band)
        if grid is None:
            grid = Grid.for_units(s.meta.units, method == "change")
            flood, dry = np.zeros(grid.n), np.zeros(grid.n)
        ok = np.isfinite(img)
        flood += grid.histogram(img[ok & (s.mask == MASK_FLOOD)])
        dry += grid.histogram(img[ok & (s.mask != MASK_FLOOD)])
    if grid is None or flood is None or dry is None or flood.sum() + dry.sum() == 0:
        raise DataError("cannot fit a threshold: the training split has no labelled valid pixels")
    return f1_threshold_from_histograms(flood, dry, grid.edges)


# --------------------------------------------------------------------------------------------------
# data: the models' splits and nodata rule
# --------------------------------------------------------------------------------------------------


def select_refs(
    data: Sequence[str | Path] | str | Path,
    format: str | None = None,
    split: str = "test",
    config: DataConfig | None = None,
    holdout_events: Sequence[str] | None = None,
) -> list[ChipRef]:
    """The labelled chips of one split, assigned exactly as the DataModule does (``all``: every chip)."""
    from floodlora.config import DataConfig
    from floodlora.data.datamodule import assign_splits
    from floodlora.data.sources import discover

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    roots = [data] if isinstance(data, str | Path) else list(data)
    cfg = dataclasses.replace(config) if config is not None else DataConfig()
    if roots:
        cfg.roots = [str(r) for r in roots]
    if format is not None:
        cfg.format = format
    if holdout_events is not None:
        cfg.holdout_events = list(holdout_events)
    refs = discover(cfg.roots, cfg.format)
    chosen = [r for r in refs if r.labelled] if split == "all" else assign_splits(refs, cfg)[split]
    if not chosen:
        raise DataError(f"{', '.join(cfg.roots)}: the {split} split has no labelled chips")
    return chosen


def _iter_samples(
    refs_or_samples: Iterable[ChipRef | Sample], max_nodata_fraction: float | None
) -> Iterator[Sample]:
    """Read chips lazily; drop those the DataModule would drop (too much nodata) and unlabelled ones."""
    from floodlora.data.sources import read_sample

    for item in refs_or_samples:
        s = item if isinstance(item, Sample) else read_sample(item)
        if not isinstance(item, Sample):  # the chip's identity across roots, as ChipConfusion keys it
            s.meta.extra.setdefault("key", item.key)
        if s.mask is None:
            continue
        if max_nodata_fraction is not None and s.nodata_fraction() > max_nodata_fraction:
            continue
        yield s


def load_samples(
    data: Sequence[str | Path] | str | Path,
    format: str | None = None,
    split: str | None = "test",
    max_chips: int | None = None,
    seed: int = 0,
    config: DataConfig | None = None,
    max_nodata_fraction: float | None = 0.5,
) -> list[Sample]:
    """Read the labelled chips of a split (at most `max_chips`, an evenly spaced deterministic subset)."""
    refs = subsample(select_refs(data, format, split or "all", config), max_chips)
    return list(_iter_samples(refs, max_nodata_fraction))


def subsample(refs: Sequence[ChipRef], max_chips: int | None) -> list[ChipRef]:
    """At most `max_chips` refs, evenly spaced through the (deterministic) discovery order."""
    refs = list(refs)
    if max_chips is not None and len(refs) > max_chips:
        idx = np.unique(np.linspace(0, len(refs) - 1, max_chips).round().astype(int))
        refs = [refs[i] for i in idx]
    return refs


def read_samples(refs: Iterable[ChipRef | Sample], max_nodata_fraction: float | None = 0.5) -> list[Sample]:
    """Labelled samples of `refs`, skipping chips the DataModule would skip for nodata."""
    return list(_iter_samples(refs, max_nodata_fraction))


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
    }


def run_baseline(
    method: str,
    refs_or_samples: Sequence[ChipRef | Sample],
    band: str = "both",
    mode: str = "chip",
    train: Sequence[ChipRef | Sample] | None = None,
    threshold: float | None = None,
    max_nodata_fraction: float | None = 0.5,
    per_chip: bool = True,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Score a baseline on chips; returns the ``evaluate`` JSON (fractions) plus a ``baseline`` block.

    `mode` picks the threshold (see the module docstring); ``fitted`` needs `train` chips, or an
    explicit `threshold`. With `keep_predictions` the result also holds ``predictions`` (chip id ->
    uint8 map) for the panels; it is not JSON and the CLI never asks for it.
    """
    from floodlora.metrics import ChipConfusion, ChipRecord, probability_histogram

    if method not in METHODS:
        raise ConfigError(f"unknown baseline {method!r}; expected one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ConfigError(f"unknown threshold mode {mode!r}; expected one of {', '.join(MODES)}")
    if band not in BAND_CHOICES:
        raise ConfigError(f"unknown band {band!r}; expected one of {', '.join(BAND_CHOICES)}")
    thresholds: dict[str, float] = {}
    fixed = threshold
    if fixed is None and mode == "fitted":
        if not train:
            raise DataError("mode fitted needs training chips (the train split is empty)")
        fixed = fit_threshold(_iter_samples(train, max_nodata_fraction), method, band)
    if fixed is None and mode == "event":
        pooled: dict[str, np.ndarray] = {}
        grids: dict[str, Grid] = {}
        for s in _iter_samples(refs_or_samples, max_nodata_fraction):
            grid = grids.setdefault(s.meta.event, Grid.for_units(s.meta.units, method == "change"))
            h = grid.histogram(baseline_image(s, method, band))
            pooled[s.meta.event] = pooled.get(s.meta.event, 0) + h
        thresholds = {ev: otsu_from_histogram(h, grids[ev].edges) for ev, h in pooled.items()}

    conf = ChipConfusion()
    chip_thresholds: list[float] = []
    predictions: dict[str, np.ndarray] = {}
    units: set[str] = set()
    n = 0
    for s in _iter_samples(refs_or_samples, max_nodata_fraction):
        img = baseline_image(s, method, band)
        if fixed is not None:
            t = fixed
        elif mode == "event":
            t = thresholds[s.meta.event]
        elif np.isfinite(img).any():
            t = otsu_threshold(img, Grid.for_units(s.meta.units, method == "change"))
            chip_thresholds.append(t)
        else:
            t = -np.inf
        with np.errstate(invalid="ignore"):
            pred = (img < t).astype(np.uint8)
        valid = s.valid & np.isfinite(img)
        key = str(s.meta.extra.get("key", s.meta.chip_id))
        hist = probability_histogram(pred, s.mask, valid, conf.nbins)  # a 0/1 map fills bins 0 and nbins
        conf.chips[key] = ChipRecord(s.meta.event, hist, s.meta.chip_id)
        if keep_predictions:
            predictions[s.meta.chip_id] = pred
        units.add(s.meta.units)
        n += 1
    if n == 0:
        raise DataError("no labelled chips to score (all unlabelled or above max_nodata_fraction)")
    result = conf.report(threshold=0.5, per_chip=per_chip)
    info: dict[str, Any] = {"method": method, "band": band, "mode": mode, "units": sorted(units)}
    if fixed is not None:
        info["threshold_value"] = fixed
    elif mode == "event":
        info["threshold_value"] = thresholds
    else:
        info["threshold_value"] = _summary(chip_thresholds) if chip_thresholds else None
    info["value"] = ("post-event backscatter" if method == "otsu" else "post - pre backscatter") + (
        " (scaled 8-bit values)" if units == {"scaled-uint8"} else " (dB)"
    )
    result["baseline"] = info
    if keep_predictions:
        result["predictions"] = predictions
    return result


def run_split_baseline(
    refs_or_samples: Sequence[ChipRef | Sample],
    options: Any = None,
    max_nodata_fraction: float | None = 0.5,
    per_chip: bool = True,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Score split-based thresholding (one fit per event, labels unused) like :func:`run_baseline`."""
    from floodlora.data.split_threshold import split_threshold
    from floodlora.metrics import ChipConfusion, ChipRecord, probability_histogram

    samples = list(_iter_samples(refs_or_samples, max_nodata_fraction))
    if not samples:
        raise DataError("no labelled chips to score (all unlabelled or above max_nodata_fraction)")
    by_event: dict[str, list[Sample]] = {}
    for s in samples:
        by_event.setdefault(s.meta.event, []).append(s)
    conf = ChipConfusion()
    predictions: dict[str, np.ndarray] = {}
    fits: dict[str, Any] = {}
    for event, group in by_event.items():  # one fit per event: its chips are pieces of one scene
        result = split_threshold(group, options)
        fits[event] = result.describe()
        for s, water in zip(group, result.water, strict=True):
            pred = (water == MASK_FLOOD).astype(np.uint8)
            valid = s.valid & (water != MASK_NODATA)
            key = str(s.meta.extra.get("key", s.meta.chip_id))
            conf.chips[key] = ChipRecord(
                event, probability_histogram(pred, s.mask, valid, conf.nbins), s.meta.chip_id
            )
            if keep_predictions:
                predictions[s.meta.chip_id] = pred
    result = conf.report(threshold=0.5, per_chip=per_chip)
    result["baseline"] = {
        "method": "split", "band": "both", "mode": "event", "units": sorted({s.meta.units for s in samples}),
        "threshold_value": {ev: {b: f["threshold"] for b, f in d["bands"].items()} for ev, d in fits.items()},
        "value": "split-based thresholding of the bimodal tiles (new water with a pre view)",
        "fits": fits,
    }  # fmt: skip
    if keep_predictions:
        result["predictions"] = predictions
    return result


def baseline_name(method: str, band: str, mode: str) -> str:
    """A short table label, e.g. ``Otsu VV+VH (per chip)``."""
    if method == "split":
        return "Split-based thresholding (per event, label-free)"
    what = "Otsu" if method == "otsu" else "Change (post-pre)"
    b = {"both": "VV+VH", "vv": "VV", "vh": "VH"}[band]
    how = {"chip": "per-chip Otsu", "event": "per-event Otsu", "fitted": "threshold fitted on train"}[mode]
    if method == "otsu":
        how = {"chip": "per chip", "event": "per event", "fitted": "fitted on train"}[mode]
    return f"{what} {b} ({how})"


def baseline_for_data(
    method: str,
    data: Sequence[str | Path] | str | Path | None = None,
    format: str | None = None,
    split: str = "test",
    band: str = "both",
    mode: str = "chip",
    config: DataConfig | None = None,
    holdout_events: Sequence[str] | None = None,
    per_chip: bool = True,
) -> dict[str, Any]:
    """``floodlora baseline``: pick the split like the DataModule, fit on train when asked, score."""
    if method not in ALL_METHODS:
        raise ConfigError(f"unknown baseline {method!r}; expected one of {', '.join(ALL_METHODS)}")
    roots = data if data is not None else []
    refs = select_refs(roots, format, split, config, holdout_events)
    train = None
    if mode == "fitted":
        train = select_refs(roots, format, "train", config, holdout_events)
    mnf = config.max_nodata_fraction if config is not None else 0.5
    if method == "split":
        result = run_split_baseline(refs, max_nodata_fraction=mnf, per_chip=per_chip)
    else:
        result = run_baseline(
            method, refs, band, mode, train=train, max_nodata_fraction=mnf, per_chip=per_chip
        )
    result["split"] = split
    used = [str(r) for r in ([roots] if isinstance(roots, str | Path) else roots)]
    result["data"] = {
        "roots": used or (list(config.roots) if config is not None else []),
        "format": format or (config.format if config is not None else None),
    }
    result["baseline"]["name"] = baseline_name(method, band, mode)
    if train is not None:
        result["baseline"]["n_train_chips"] = len(train)
    return result


def baseline_command(
    method: str,
    data: Sequence[str] | None = None,
    format: str | None = None,
    split: str = "test",
    band: str = "both",
    mode: str = "chip",
    holdout_events: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    json_out: str | Path | None = None,
) -> dict[str, Any]:
    """``floodlora baseline``: a run directory (if given) supplies the data config, so splits match it."""
    from floodlora.io import atomic_write_json

    config = None
    if run_dir is not None:
        from floodlora.config import load_config

        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.is_file():
            raise DataError(f"{run_dir}: not a floodlora run directory (config.yaml is missing)")
        config = load_config(cfg_path).data
    if not data and config is None:
        raise ConfigError("pass --data PATH (or --run RUN_DIR to reuse a run's data and splits)")
    result = baseline_for_data(
        method, list(data or []) or None, format, split, band, mode, config, holdout_events or None
    )
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result


def format_result(result: dict[str, Any]) -> str:
    """A few human lines: overall percentages, then one line per event."""
    keys = ("f1", "accuracy", "precision", "recall", "iou", "dice")

    def line(name: str, m: dict[str, Any]) -> str:
        vals = "  ".join(f"{k} {100 * m[k]:5.1f}" for k in keys)
        return f"{name:<28} {vals}  chips {m.get('n_chips', '?')}"

    head = result.get("baseline", {}).get("name", "")
    out = [f"{head} on split {result.get('split', '?')}", line("all", result)]
    out += [line(ev, m) for ev, m in result.get("per_event", {}).items()]
    return "\n".join(out)
