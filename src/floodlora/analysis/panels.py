"""Prediction panels (the paper's Figure 3): inputs, ground truth, and per model a prediction + error map.

A row per chip: the pre/post VV/VH inputs that the chip has (contrast-stretched per image), the
ground truth, then for every model side by side its flood probability and an error map
(TP blue, FP red, FN orange, TN white, nodata grey), with the chip's F1 in the title. Worst and best
chips are picked from per-chip F1 so that failure modes are seen, not only successes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from floodlora.analysis._inputs import ignore_map
from floodlora.data.sample import MASK_FLOOD, MASK_NODATA, Sample, centre_window
from floodlora.errors import DataError, size_text

if TYPE_CHECKING:
    from floodlora.config import DataConfig
    from floodlora.data.sources import ChipRef
    from floodlora.models.segmentor import FloodSegmentor

__all__ = [
    "ERROR_COLOURS",
    "chip_f1",
    "error_map",
    "predict_refs",
    "prediction_panels",
    "run_predictions",
    "select_chips",
]

# TN, TP, FP, FN, nodata
ERROR_COLOURS: dict[str, str] = {
    "true negative": "#ffffff",
    "true positive": "#1f5fbf",
    "false positive": "#d62728",
    "false negative": "#ff9f1c",
    "nodata": "#9e9e9e",
}
_INPUT_ORDER = ("pre", "pre_asc", "pre_desc", "post", "post_asc", "post_desc")


def _centre_to(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop `arr` to `shape` (the DataModule cuts chips to a multiple of 8 around the centre)."""
    h, w = arr.shape[-2:]
    th, tw = shape
    if (h, w) == (th, tw):
        return arr
    if th > h or tw > w:
        raise DataError(f"prediction {size_text(th, tw)} is larger than the chip {size_text(h, w)}")
    return arr[(..., *centre_window(h, w, th, tw))]


def error_map(pred: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """Codes 0 TN, 1 TP, 2 FP, 3 FN, 4 nodata from a binary prediction and a 0/1/255 mask."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(mask) == MASK_FLOOD
    codes = np.where(p & t, 1, np.where(p & ~t, 2, np.where(~p & t, 3, 0))).astype(np.uint8)
    bad = np.asarray(mask) == MASK_NODATA
    if ignore is not None:
        bad = bad | ignore
    codes[bad] = 4
    return codes


def chip_f1(pred: np.ndarray, sample: Sample, threshold: float = 0.5) -> float:
    """F1 of one chip over its valid labelled pixels, by the convention of
    :func:`floodlora.metrics.scores_from_counts` (1.0 when it has no flood and none is predicted)."""
    from floodlora.metrics import scores_from_counts

    if sample.mask is None:
        raise DataError(f"{sample.meta.chip_id}: no label")
    pred = np.asarray(pred)
    mask = _centre_to(sample.mask, pred.shape)
    ok = ~_centre_to(ignore_map(sample), pred.shape)
    p = (pred >= threshold)[ok]
    t = (mask == MASK_FLOOD)[ok]
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return scores_from_counts(tp, fp, fn, int((~p & ~t).sum()))["f1"]


def select_chips(
    samples: Sequence[Sample],
    predictions: Mapping[str, np.ndarray] | None = None,
    k: int = 4,
    how: str = "worst-best",
    chip_ids: Sequence[str] | None = None,
    scores: Mapping[str, float] | None = None,
) -> list[Sample]:
    """`chip_ids` if given; else by per-chip F1 (`scores`, or computed from `predictions`).

    ``how``: ``worst``, ``best`` or ``worst-best`` (half of each, worst first).
    """
    by_id = {s.meta.chip_id: s for s in samples}
    if chip_ids:
        missing = [c for c in chip_ids if c not in by_id]
        if missing:
            raise DataError(f"chip(s) not found: {', '.join(missing[:5])}")
        return [by_id[c] for c in chip_ids]
    if scores is None:
        if predictions is None:
            raise ValueError("select_chips needs chip_ids, scores or predictions")
        scores = {c: chip_f1(predictions[c], by_id[c]) for c in by_id if c in predictions}
    ranked = sorted((c for c in scores if c in by_id), key=lambda c: (scores[c], c))
    if how == "worst":
        chosen = ranked[:k]
    elif how == "best":
        chosen = ranked[::-1][:k]
    elif how == "worst-best":
        n_worst = (k + 1) // 2
        chosen = ranked[:n_worst] + [c for c in ranked[::-1][: k - n_worst] if c not in ranked[:n_worst]]
    else:
        raise ValueError(f"how must be worst, best or worst-best, got {how!r}")
    return [by_id[c] for c in chosen]


def _stretch(img: np.ndarray) -> np.ndarray:
    """2-98 percentile stretch to [0, 1] for display; NaN stays NaN (drawn grey)."""
    v = img[np.isfinite(img)]
    if v.size == 0:
        return img
    lo, hi = np.percentile(v, [2, 98])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def prediction_panels(
    samples: Sequence[Sample],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    out_png: str | Path,
    threshold: float = 0.5,
    title: str | None = None,
) -> Path:
    """Write the panel figure: one row per sample, models side by side (name -> chip id -> map).

    Maps are flood probabilities in [0, 1] or 0/1 predictions, shaped like the chip (or its centre
    crop). A model without a prediction for a chip leaves blank cells, never a crash.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from floodlora.io import atomic_path

    if not samples:
        raise DataError("no chips to draw")
    if any(s.mask is None for s in samples):
        raise DataError("panels need labelled chips")
    inputs = [
        (v, b)
        for v in _INPUT_ORDER
        for b in ("vv", "vh")
        if any(v in s.views and b in s.views[v] for s in samples)
    ]
    models = list(predictions)
    ncols = len(inputs) + 1 + 2 * len(models)
    nrows = len(samples)
    fig = Figure(figsize=(2.3 * ncols, 2.4 * nrows + 1.2), dpi=100)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    err_cmap = ListedColormap(list(ERROR_COLOURS.values()))
    gt_cmap = ListedColormap(["#ffffff", "#1f5fbf", "#9e9e9e"])
    prob_im = None
    for r, s in enumerate(samples):
        units = "dB" if s.meta.units == "db" else ("scaled" if s.meta.units == "scaled-uint8" else "linear")
        for c, (v, b) in enumerate(inputs):
            ax = axes[r, c]
            if v in s.views and b in s.views[v]:
                ax.imshow(_stretch(s.views[v][b]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes, color="0.5")
            ax.set_title(f"{v} {b.upper()} ({units})", fontsize=8)
        gt = np.where(s.mask == 255, 2, (s.mask == MASK_FLOOD).astype(int))
        gt = np.where(ignore_map(s), 2, gt)
        axes[r, len(inputs)].imshow(gt, cmap=gt_cmap, vmin=0, vmax=2, interpolation="nearest")
        axes[r, len(inputs)].set_title("ground truth", fontsize=8)
        axes[r, 0].set_ylabel(f"{s.meta.chip_id}\n{s.meta.event}", fontsize=7)
        for m, name in enumerate(models):
            pa, ea = axes[r, len(inputs) + 1 + 2 * m], axes[r, len(inputs) + 2 + 2 * m]
            pred = predictions[name].get(s.meta.chip_id)
            if pred is None:
                for ax in (pa, ea):
                    ax.text(0.5, 0.5, "no prediction", ha="center", va="center", transform=ax.transAxes)
                pa.set_title(name, fontsize=8)
                continue
            pred = np.asarray(pred, dtype=np.float32)
            prob_im = pa.imshow(pred, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            pa.set_title(f"{name}", fontsize=8)
            codes = error_map(
                pred >= threshold, _centre_to(s.mask, pred.shape), _centre_to(ignore_map(s), pred.shape)
            )
            ea.imshow(codes, cmap=err_cmap, vmin=-0.5, vmax=4.5, interpolation="nearest")
            ea.set_title(f"errors, F1 {100 * chip_f1(pred, s, threshold):.1f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=col, edgecolor="0.3", label=lab) for lab, col in ERROR_COLOURS.items()]
    handles.insert(0, Patch(facecolor="#1f5fbf", edgecolor="0.3", label="flood (ground truth)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title or f"Predictions ({', '.join(models) or 'ground truth only'})", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 0.94 if prob_im is not None else 1, 0.97))
    if prob_im is not None:
        cax = fig.add_axes((0.95, 0.2, 0.012, 0.6))
        fig.colorbar(prob_im, cax=cax, label="flood probability")
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


# --------------------------------------------------------------------------------------------------
# predictions of trained runs on chosen chips
# --------------------------------------------------------------------------------------------------


def predict_refs(
    model: FloodSegmentor,
    refs: Sequence[ChipRef],
    data: DataConfig,
    presets: Mapping[str, Any] | None = None,
    batch_size: int = 4,
) -> dict[str, np.ndarray]:
    """Flood probabilities per chip id, preprocessed exactly as evaluation does (FloodDataset)."""
    import torch
    from torch.utils.data import DataLoader

    from floodlora.analysis.baselines import select_refs
    from floodlora.data.datamodule import FloodDataset, collate, resolve_presets
    from floodlora.models.inputs import model_inputs

    if presets is None:
        try:
            train = select_refs(data.roots, data.format, "train", data)
        except DataError:
            train = []
        presets = resolve_presets(data.normalization, list(refs), train)
    ds = FloodDataset(list(refs), dict(presets), data.views, data.bands, crop_size=None, seed=data.seed)
    out: dict[str, np.ndarray] = {}
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate):
            views, time, latlon = model_inputs(model, batch)
            logits = model.forward_all(views, time, latlon)  # each chip: its own label kind's output
            logits = model.select_outputs(logits, batch.get("label_kind"), list(views))
            probs = torch.sigmoid(logits)[:, 0].float().numpy()
            for chip, p in zip(batch["chip_id"], probs, strict=True):
                out[str(chip)] = p
    return out


def run_predictions(
    run_dir: str | Path, refs: Sequence[ChipRef], checkpoint: str | None = None
) -> dict[str, np.ndarray]:
    """A trained run's flood probabilities on `refs` (its own data config and normalisation)."""
    import warnings

    from floodlora.runs import load_run

    loaded = load_run(run_dir, checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*view\(s\) .* missing.*")
        return predict_refs(loaded.model, refs, loaded.config.data)
