"""Fit a segmentor's pixel prior per label kind: a logistic regression, or an MLP over context.

A fitted threshold maps open water on an unseen event better than a network trained for minutes:
a network's probabilities need hundreds of Adam steps to become confident and its val-chosen
threshold does not transfer between events. The prior puts the threshold into the model: before
training, a logistic regression (scikit-learn) is fitted on pixels of the training chips, one per
output (label kind), and written into the segmentor's 1x1 `prior` convolution. The network then
learns what a threshold cannot see (context, edges, change) on top of it. With
`model.prior_features: context` the prior is a small MLP (scikit-learn's MLPClassifier) over each
pixel's neighbourhood means and its tile's Otsu level and median; `context-quantiles` adds the
tile's quantiles and the local texture (floodlora.models.prior).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from floodlora.config import DEFAULT_LABEL_KIND
from floodlora.data.sample import MASK_NODATA
from floodlora.models.prior import ContextPrior, prior_features
from floodlora.models.segmentor import FloodSegmentor

MAX_CHIPS = 96  # chips drawn from the training split (each decoded once)
PIXELS_PER_CHIP = 2048  # labelled pixels drawn from each chip
# The context prior learns from tile-level features (a tile's Otsu level and median), so it needs
# many tiles more than many pixels of each: on OMBRIA, 60 chips gave its MLP about 8 F1 points less
# than 600 with the same number of pixels in all.
CONTEXT_MAX_CHIPS = 1024
CONTEXT_PIXELS_PER_CHIP = 256


def sample_pixels(
    model: FloodSegmentor,
    dataset: Any,
    max_chips: int = MAX_CHIPS,
    pixels_per_chip: int = PIXELS_PER_CHIP,
    seed: int = 0,
    only_kinds: Sequence[str] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Label kind -> (features `[N, views x bands]`, labels `[N]`) from up to `max_chips` chips.

    `only_kinds` keeps the chips of those label kinds only; a dataset with `refs` skips the others
    unread.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))[:max_chips]
    refs = getattr(dataset, "refs", None)
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for i in order.tolist():
        if only_kinds is not None and refs is not None and refs[i].label_kind not in only_kinds:
            continue
        item = dataset[i]
        kind = str(item.get("label_kind", DEFAULT_LABEL_KIND))
        if only_kinds is not None and kind not in only_kinds:
            continue
        mask = item["mask"].numpy()
        keep = item["valid"].numpy() & (mask != MASK_NODATA)
        if not keep.any():
            continue
        h, w = mask.shape
        pixels = {v: item["views"][v][None] for v in item["views"]}
        ref = next(iter(pixels.values()))
        assert model.prior is not None
        inputs = model.prior_inputs(pixels, 1, h, w, ref)
        with torch.no_grad():
            features = prior_features(model.prior, inputs)[0].numpy()  # [F, H, W]
        idx = np.flatnonzero(keep)
        idx = rng.choice(idx, size=min(pixels_per_chip, idx.size), replace=False)
        xs, ys = out.setdefault(kind, ([], []))
        xs.append(features.reshape(features.shape[0], -1)[:, idx].T)
        ys.append(mask.reshape(-1)[idx])
    return {k: (np.concatenate(x), np.concatenate(y)) for k, (x, y) in out.items()}


def fit_pixel_prior(
    model: FloodSegmentor,
    dataset: Any,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    kinds: Sequence[str] | None = None,
    context_kinds: Sequence[str] | None = None,
    context_dataset: Any | None = None,
) -> dict[str, Any]:
    """Fit `model.prior` on `dataset` (the training split) in place; returns what was fitted.

    With `context_dataset` (the same chips whole, `FloodDataModule.whole_chips`), the outputs fitted
    as the context MLP are sampled from it: their tile statistics then match evaluation's, while the
    logistic outputs, which read no tile statistic, keep the augmented crops (only their chips are
    read from `dataset`).

    Each output is fitted on the chips of its label kind; a single-output model on every chip. An
    output whose kind has no training chip, whose pixels hold one class only, or that is not in
    `kinds` (None: every output) stays at zero. In a context prior, outputs not in `context_kinds`
    (None: every output) are fitted as a logistic term on the pixel's own bands.
    """
    if model.prior is None:
        raise ValueError("this model has no pixel prior (model.pixel_prior is off)")
    if isinstance(model.prior, ContextPrior):
        mlp_kinds = [k for k in model.outputs if context_kinds is None or k in context_kinds]
        if context_dataset is not None and len(model.outputs) == 1:  # one output answers every chip:
            dataset = context_dataset if mlp_kinds else dataset  # whole chips for an MLP, else crops
            context_dataset = None
        n, per_chip = CONTEXT_MAX_CHIPS, CONTEXT_PIXELS_PER_CHIP
        if context_dataset is None:
            samples = sample_pixels(model, dataset, n, per_chip, seed)
        else:  # the MLP outputs from the whole chips, the logistic ones from the crops
            crop_kinds = [k for k in model.outputs if k not in mlp_kinds]
            samples = sample_pixels(model, dataset, n, per_chip, seed, crop_kinds) if crop_kinds else {}
            samples |= sample_pixels(model, context_dataset, n, per_chip, seed, mlp_kinds)
    else:
        samples = sample_pixels(model, dataset, seed=seed)
    if len(model.outputs) == 1 and samples:
        xs, ys = zip(*samples.values(), strict=True)
        samples = {model.outputs[0]: (np.concatenate(xs), np.concatenate(ys))}
    summary: dict[str, Any] = {}
    for k, kind in enumerate(model.outputs):
        if kinds is not None and kind not in kinds:
            summary[kind] = {"fitted": False, "pixels": 0, "reason": "not in model.prior_kinds"}
            continue
        x, y = samples.get(kind, (np.zeros((0, 1)), np.zeros(0)))
        if len(np.unique(y)) < 2:
            summary[kind] = {"fitted": False, "pixels": len(y)}
            continue
        form = "logistic"
        if isinstance(model.prior, ContextPrior) and context_kinds is not None and kind not in context_kinds:
            accuracy = _fit_logistic_in_context(model.prior, k, x, y)
        elif isinstance(model.prior, ContextPrior):
            accuracy, form = _fit_context(model.prior, k, x, y, seed), "context"
        else:
            coef, intercept, accuracy = _fit_logistic(x, y)
            with torch.no_grad():
                model.prior.weight[k, :, 0, 0] = torch.from_numpy(coef).to(model.prior.weight)
                model.prior.bias[k] = intercept
        summary[kind] = {
            "fitted": True,
            "form": form,
            "pixels": len(y),
            "positive_fraction": round(float(y.mean()), 4),
            "train_accuracy": round(accuracy, 4),
        }
        if log is not None:
            log(f"pixel prior [{kind}]: {form}, fitted on {len(y)} pixels, accuracy {100 * accuracy:.1f}%")
    return summary


def _fit_context(prior: ContextPrior, k: int, x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Fit output `k`'s MLP on standardised features and fold the standardisation into its first layer."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a feature constant here (an absent view) carries no weight
    z = (x - mean) / scale
    mlp = MLPClassifier(
        (prior.hidden_size,), max_iter=40, early_stopping=True, random_state=seed, batch_size=512
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(z, y)
    first = mlp.coefs_[0].T / scale[None, :]  # [hidden, features]
    first_bias = mlp.intercepts_[0] - first @ mean
    prior.set_output(
        k,
        torch.from_numpy(first),
        torch.from_numpy(first_bias),
        torch.from_numpy(mlp.coefs_[1][:, 0]),
        float(mlp.intercepts_[1][0]),
    )
    return float(mlp.score(z, y))


def _fit_logistic_in_context(prior: ContextPrior, k: int, x: np.ndarray, y: np.ndarray) -> float:
    """Fit output `k` as a logistic term on the pixel's own bands, written into its MLP exactly.

    The bands are the first `in_channels` context features; two hidden units carry the linear term
    z as relu(z) - relu(-z), the others stay at zero.
    """
    c = prior.in_channels
    coef, intercept, accuracy = _fit_logistic(x[:, :c], y)
    first = np.zeros((prior.hidden_size, prior.n_features))
    first[0, :c], first[1, :c] = coef, -coef
    first_bias = np.zeros(prior.hidden_size)
    first_bias[0], first_bias[1] = intercept, -intercept
    second = np.zeros(prior.hidden_size)
    second[0], second[1] = 1.0, -1.0
    prior.set_output(k, torch.from_numpy(first), torch.from_numpy(first_bias), torch.from_numpy(second), 0.0)
    return accuracy


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A per-pixel logistic regression: (coefficients, intercept, training accuracy)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, max_iter=500).fit(x, y)
    return lr.coef_[0], float(lr.intercept_[0]), float(lr.score(x, y))
