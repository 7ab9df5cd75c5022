"""Segmentation metrics of the paper: accuracy, precision, recall, F1, IoU, Dice (positive = flood).

Everything is derived from one statistic: for labelled, valid pixels, a histogram of the predicted
flood probability split by the true class (`[2, nbins + 1]`, bin `k` holds p in [k/n, (k+1)/n)).
Confusion counts at any grid threshold t = k/n (prediction: flood if p >= t) are cumulative sums
of it, so one pass gives the metrics at 0.5 *and* the F1-optimal threshold, and histograms add up:
across batches, chips, events, and DDP ranks (a sum-reduced torchmetrics state).

Micro-averaging is over pixels: Dice equals F1 by construction at a fixed threshold; both are
reported because the paper reports both. A ratio with a zero denominator is 0 (torchmetrics'
`zero_division=0`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from floodlora.config import DEFAULT_LABEL_KIND
from floodlora.data.sample import MASK_NODATA
from floodlora.errors import DataError

NBINS = 100
METRIC_KEYS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "iou", "dice")

ArrayLike = Tensor | np.ndarray


def _as_tensor(x: ArrayLike) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def probability_histogram(
    probs: ArrayLike,
    target: ArrayLike,
    valid: ArrayLike | None = None,
    nbins: int = NBINS,
    per_sample: bool = False,
) -> Tensor:
    """Histogram `[2, nbins+1]` (or `[B, 2, nbins+1]` with `per_sample`) of probabilities by true class.

    `probs`: flood probabilities (or hard 0/1 predictions) shaped like `target` or `[B, 1, H, W]`;
    `target`: 0 dry, 1 flood, 255 nodata; `valid`: optional bool map, False pixels are ignored.
    """
    target_t = _as_tensor(target)
    probs_t = _as_tensor(probs).to(device=target_t.device).float().reshape(target_t.shape)
    if per_sample and target_t.dim() < 2:
        raise ValueError("per_sample needs a leading batch dimension")
    keep = target_t != MASK_NODATA
    if valid is not None:
        keep = keep & _as_tensor(valid).to(target_t.device).bool().reshape(target_t.shape)
    bins = torch.nan_to_num(probs_t, nan=0.0).clamp(0.0, 1.0).mul(nbins).floor().long().clamp(0, nbins)
    label = (target_t == 1).long()
    idx = label * (nbins + 1) + bins
    n_samples = target_t.shape[0] if per_sample else 1
    if per_sample:
        sample = torch.arange(n_samples, device=idx.device).view(-1, *([1] * (idx.dim() - 1)))
        idx = idx + sample * 2 * (nbins + 1)
    counts = torch.bincount(idx[keep], minlength=n_samples * 2 * (nbins + 1))
    return counts.view(n_samples, 2, nbins + 1) if per_sample else counts.view(2, nbins + 1)


def threshold_index(threshold: float, nbins: int = NBINS) -> int:
    """The grid index of a threshold (thresholds are snapped to multiples of 1/nbins)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return round(threshold * nbins)


def counts_at(hist: Tensor, threshold: float = 0.5) -> dict[str, int]:
    """tp, fp, fn, tn at `threshold` from a `[2, nbins+1]` histogram."""
    nbins = hist.shape[-1] - 1
    k = threshold_index(threshold, nbins)
    neg, pos = hist[0].long(), hist[1].long()
    tp, fn = int(pos[k:].sum()), int(pos[:k].sum())
    fp, tn = int(neg[k:].sum()), int(neg[:k].sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def scores_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """The six paper metrics as fractions from confusion counts.

    One convention everywhere (per chip, per event, per split, and the report's panels): where there
    is no flood in the label and none is predicted (tp + fp + fn = 0) F1, IoU and Dice are 1, a
    perfect answer; precision and recall, undefined there, are 0.
    """
    agree = tp + fp + fn == 0
    f1 = 1.0 if agree else _div(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": _div(tp + tn, tp + fp + fn + tn),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": f1,
        "iou": 1.0 if agree else _div(tp, tp + fp + fn),
        "dice": f1,
    }


def scores_at(hist: Tensor, threshold: float = 0.5) -> dict[str, float]:
    return scores_from_counts(**counts_at(hist, threshold))


def f1_curve(hist: Tensor) -> tuple[Tensor, Tensor]:
    """(thresholds, F1) over the whole grid, vectorised."""
    nbins = hist.shape[-1] - 1
    neg, pos = hist[0].double(), hist[1].double()
    tp = pos.flip(0).cumsum(0).flip(0)
    fp = neg.flip(0).cumsum(0).flip(0)
    fn = pos.sum() - tp
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))
    return torch.arange(nbins + 1, dtype=torch.float64) / nbins, f1


def operating_index(f1: Tensor, tolerance: float = 0.0, anchor: float | None = None) -> int:
    """Grid index an operating-point rule picks on an F1 curve (threshold = index / (len - 1)).

    Among the thresholds whose F1 is within `tolerance` of the best: the one nearest `anchor` when
    given, else the highest (see :func:`operating_threshold`). Tolerance 0 or a curve without
    flood: the best F1, ties nearest `anchor` (default 0.5).
    """
    f1 = torch.as_tensor(f1, dtype=torch.float64)
    thresholds = torch.arange(len(f1), dtype=torch.float64) / (len(f1) - 1)
    best = float(f1.max())
    tol = max(tolerance, 0.0) if best > 0 else 0.0
    candidates = torch.nonzero(f1 >= best - tol - 1e-12).flatten()
    if anchor is None and tol > 0:
        return int(candidates.max())
    target = 0.5 if anchor is None else anchor
    return int(candidates[(thresholds[candidates] - target).abs().argmin()])


def best_f1_threshold(hist: Tensor) -> tuple[float, float]:
    """The grid threshold maximising F1 (ties: closest to 0.5), and that F1."""
    thresholds, f1 = f1_curve(hist)
    k = operating_index(f1)
    return float(thresholds[k]), float(f1[k])


def operating_threshold(
    hist: Tensor, tolerance: float = 0.0, anchor: float | None = None
) -> tuple[float, float]:
    """The highest grid threshold whose F1 is within `tolerance` of the best (with `anchor`: the
    one nearest it), and that F1.

    Why: a validation split seldom tells apart the thresholds on its plateau of near-equal F1, while
    a flood the model never saw usually holds far less flood than chips curated around floods. Of the
    thresholds val cannot separate, the one with the fewest false alarms carries best to new events.
    With `anchor` (``adapt``'s calibration: the model's own threshold), a few labelled chips of a new
    event, whose F1 curve is flat near its top, move a model's operating point only as far as they
    demand. ``tolerance`` 0 (or a split without flood) is :func:`best_f1_threshold`, ties nearest
    `anchor`.
    """
    thresholds, f1 = f1_curve(hist)
    k = operating_index(f1, tolerance, anchor)
    return float(thresholds[k]), float(f1[k])


def otsu_from_histogram(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu (1979): the cut maximising between-class variance; returns t with class 0 = values < t."""
    counts = np.asarray(counts, dtype=np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    total = counts.sum()
    nz = np.flatnonzero(counts)
    if total == 0:
        raise DataError("Otsu threshold of an empty image (no valid pixels)")
    if len(nz) == 1:  # constant image: nothing below the single value
        return float(edges[nz[0]])
    w0 = np.cumsum(counts)[:-1]
    m0 = np.cumsum(counts * centres)[:-1]
    w1 = total - w0
    mean_all = (counts * centres).sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 / total - m0) ** 2 / (w0 * w1)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    best = np.flatnonzero(between >= between.max() - 1e-12 * abs(between.max()))
    k = int(best[len(best) // 2])  # plateaus (empty bins between modes): the middle of the gap
    return float(edges[k + 1])


def otsu_threshold(hist: Tensor) -> float:
    """Otsu's grid threshold on the model's probabilities, labels unused (both rows summed).

    A label-free operating point for one event: where a model ranks pixels well but its operating
    point, learned on other events' flood shares, does not fit this one (a rare flood on a scene
    the model finds wet), the valley of the probability histogram can. Prediction: flood if p >= t;
    0.5 where the probabilities fill fewer than two bins (no valley to find).
    """
    nbins = hist.shape[-1] - 1
    counts = hist.sum(0).double().numpy()
    if (counts > 0).sum() < 2:
        return 0.5
    edges = np.arange(nbins + 2) / nbins  # bin k holds [k/n, (k+1)/n); the last one p == 1
    return otsu_from_histogram(counts, edges)


class FloodConfusion(Metric):
    """torchmetrics state for the paper metrics: a probability histogram per class, sum-synced.

    `update(preds, target, valid=None)` takes probabilities or hard 0/1 predictions, torch or numpy;
    `compute()` returns the metrics at `threshold` as 0-d tensors (loggable by Lightning).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, nbins: int = NBINS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        threshold_index(threshold, nbins)
        self.threshold = threshold
        self.nbins = nbins
        self.add_state("hist", default=torch.zeros(2, nbins + 1, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: ArrayLike, target: ArrayLike, valid: ArrayLike | None = None) -> None:
        target_t = _as_tensor(target).to(self.hist.device)
        self.hist += probability_histogram(preds, target_t, valid, self.nbins)

    def compute(self) -> dict[str, Tensor]:
        return {k: torch.tensor(v) for k, v in scores_at(self.hist, self.threshold).items()}

    def scores(self, threshold: float | None = None) -> dict[str, float]:
        """Metrics at any grid threshold from the (synced, when called after compute) state."""
        return scores_at(self.hist, self.threshold if threshold is None else threshold)

    def best_threshold(self) -> tuple[float, float]:
        return best_f1_threshold(self.hist)


@dataclass
class ChipRecord:
    event: str
    hist: Tensor  # [2, nbins + 1], int64, CPU
    chip_id: str = ""
    label_kind: str = DEFAULT_LABEL_KIND  # what the chip's label marks (floodlora.config.LABEL_KINDS)


@dataclass
class ChipConfusion:
    """Per-chip histograms, keyed by source and path: the source of per-chip, per-event and overall metrics.

    The key is :attr:`ChipRef.key` (format:path), since equal chip ids from two roots are two chips;
    without keys the chip id is the key. `report()["per_chip"]` is keyed the same way and names the
    chip id in each entry.

    Keyed storage makes DDP gathering exact: a chip that a distributed sampler repeated to pad a
    rank is counted once after :meth:`merge`.
    """

    nbins: int = NBINS
    chips: dict[str, ChipRecord] = field(default_factory=dict)

    def update(
        self,
        probs: ArrayLike,
        target: ArrayLike,
        valid: ArrayLike | None,
        chip_ids: Sequence[str],
        events: Sequence[str],
        keys: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        hist = probability_histogram(probs, target, valid, self.nbins, per_sample=True).cpu()
        keys = chip_ids if keys is None else keys
        kinds = ["flood"] * len(chip_ids) if kinds is None else kinds
        for i, (chip, event, key, kind) in enumerate(zip(chip_ids, events, keys, kinds, strict=True)):
            self.chips[str(key)] = ChipRecord(str(event), hist[i].clone(), str(chip), str(kind))

    def merge(self, others: Iterable[ChipConfusion]) -> ChipConfusion:
        for other in others:
            self.chips.update(other.chips)
        return self

    def total(self, label_kind: str | None = None) -> Tensor:
        """The summed histogram of every chip, or of the chips whose labels are of `label_kind`."""
        out = torch.zeros(2, self.nbins + 1, dtype=torch.long)
        for rec in self.chips.values():
            if label_kind is None or rec.label_kind == label_kind:
                out += rec.hist
        return out

    def by_event(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for rec in self.chips.values():
            if rec.event in out:
                out[rec.event] = out[rec.event] + rec.hist
            else:
                out[rec.event] = rec.hist.clone()
        return dict(sorted(out.items()))

    def report(self, threshold: float = 0.5, per_chip: bool = True) -> dict[str, Any]:
        """Overall metrics + counts at `threshold`, the per-event breakdown and (optionally) per chip."""
        total = self.total()
        counts = counts_at(total, threshold)
        out: dict[str, Any] = {
            **scores_from_counts(**counts),
            "threshold": threshold,
            "n_chips": len(self.chips),
            "n_pixels": int(total.sum()),
            "counts": counts,
            "per_event": {
                ev: {**scores_at(h, threshold), "n_chips": self._n_chips(ev), "n_pixels": int(h.sum())}
                for ev, h in self.by_event().items()
            },
        }
        if per_chip:
            out["per_chip"] = {
                key: {
                    "chip_id": rec.chip_id or key,
                    "event": rec.event,
                    **scores_at(rec.hist, threshold),
                    "n_pixels": int(rec.hist.sum()),
                    "counts": counts_at(rec.hist, threshold),  # so chips can be pooled again
                }
                for key, rec in sorted(self.chips.items())
            }
        return out

    def event_otsu_report(self) -> dict[str, Any]:
        """Scores with each event at its own :func:`otsu_threshold` (label-free), counts summed."""
        thresholds: dict[str, float] = {}
        total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        for event, hist in self.by_event().items():
            thresholds[event] = otsu_threshold(hist)
            for k, v in counts_at(hist, thresholds[event]).items():
                total[k] += v
        return {**scores_from_counts(**total), "thresholds": thresholds}

    def moved_to_half(
        self, thresholds: Mapping[str, float], every_chip: float | None = None
    ) -> ChipConfusion:
        """These chips as a model scores them after its logits moved so that `thresholds[kind]`
        (per label kind; `every_chip` for all chips) becomes probability 0.5.

        Training calibrates each output on val and then reports val again; moving the histograms
        spares a second forward pass over every val chip. Each bin moves whole through the same
        logit shift (its lower edge e goes to e(1-t) / (e(1-t) + (1-e)t), in exact integer
        arithmetic), so counts at 0.5 equal counts at t before; at other thresholds a bin's pixels
        are placed within the width of the bin they came from.
        """
        n = self.nbins
        edges = torch.arange(n + 1, dtype=torch.long)
        moves: dict[int, Tensor] = {}

        def move(t: float) -> Tensor:
            k = threshold_index(t, n)
            if not 0 < k < n:
                raise ValueError(f"a calibration threshold must lie strictly inside (0, 1), got {t}")
            if k not in moves:
                up = edges * (n - k)
                moves[k] = torch.div(n * up, up + (n - edges) * k, rounding_mode="floor")
            return moves[k]

        out = ChipConfusion(nbins=n)
        for key, rec in self.chips.items():
            t = thresholds.get(rec.label_kind, every_chip)
            hist = rec.hist
            if t is not None:
                hist = torch.zeros_like(rec.hist).index_add_(1, move(t), rec.hist)
            out.chips[key] = ChipRecord(rec.event, hist, rec.chip_id, rec.label_kind)
        return out

    def _n_chips(self, event: str) -> int:
        return sum(rec.event == event for rec in self.chips.values())
