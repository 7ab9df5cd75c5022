"""Patch embeddings of the encoder: does it separate water from land before (and after) adaptation?

Three plain functions back the claim "the encoder separates water and land" with a number and a
picture: :func:`patch_embeddings` cuts every chip into the encoder's 8x8 patches and labels each
patch with its majority mask value, :func:`linear_probe` fits a class-balanced logistic regression on
held-out patches, and :func:`tsne_figure` draws a t-SNE coloured by water/land and by event.
:func:`run_embed` ties them together for ``floodlora embed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from floodlora.analysis._inputs import ignore_map, resolve_preset, square_crop, view_tensor
from floodlora.data.sample import MASK_FLOOD, Sample
from floodlora.errors import DataError

if TYPE_CHECKING:
    import torch
    from matplotlib.colors import Colormap

    from floodlora.data.sar import NormalizationPreset

__all__ = [
    "format_embed",
    "linear_probe",
    "patch_embeddings",
    "real_probe_chips",
    "run_embed",
    "tsne_coordinates",
    "tsne_figure",
]


def _encoder_call(
    model: Any,
) -> tuple[Callable[[torch.Tensor, Sequence[str]], torch.Tensor], int, tuple[str, ...] | None]:
    """(forward(pixels) -> tokens [B, 1+L, D], patch size); a segmentor's adapted encoder when given one."""

    from floodlora.models.clay import SENTINEL1_GSD, ClayEncoder, band_wavelengths
    from floodlora.models.segmentor import FloodSegmentor

    if isinstance(model, FloodSegmentor):
        enc, patch, gsd = model.encoder, model.patch_size, model.gsd  # peft-wrapped when LoRA
        model_bands: tuple[str, ...] | None = model.bands
    elif isinstance(model, ClayEncoder):
        enc, patch, gsd, model_bands = model, model.patch_size, SENTINEL1_GSD, None
    else:
        raise TypeError(f"expected a ClayEncoder or FloodSegmentor, got {type(model).__name__}")

    def forward(pixels: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        waves = band_wavelengths(tuple(bands)).to(pixels.device)
        zeros = pixels.new_zeros(pixels.shape[0], 4)
        return enc(pixels, zeros, zeros, gsd, waves)

    return forward, patch, model_bands


def patch_embeddings(
    encoder_or_segmentor: Any,
    samples: Sequence[Sample],
    bands: Sequence[str],
    normalization: str | NormalizationPreset = "auto",
    view: str = "post",
    crop: int | None = None,
    stats: dict[str, Any] | None = None,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Patch tokens of `view` for every labelled sample, with a majority water label per patch.

    Returns ``(features [N, D] float32, labels [N] 0/1, events [N])``. A patch is skipped when any
    of its pixels is nodata (imagery or label), so that the label is never a guess. Chips are centre
    cropped to a square (`crop`, default the largest multiple of the patch size), because Clay's
    positional encoding assumes square grids. Given a FloodSegmentor the adapted (LoRA) encoder is
    used; ``normalization="auto"`` on 8-bit chips uses statistics of `samples` themselves (pass the
    DataModule's preset, a :class:`NormalizationPreset`, to normalise exactly as training did).
    """
    import torch

    forward, patch, model_bands = _encoder_call(encoder_or_segmentor)
    bands = list(bands)
    if model_bands is not None and tuple(bands) != tuple(model_bands):
        raise DataError(f"bands {bands} differ from the model's {list(model_bands)}")
    labelled = [s for s in samples if s.mask is not None and view in s.views]
    if not labelled:
        raise DataError(f"no labelled samples with a {view!r} view to embed")
    cropped = [square_crop(s, crop, patch) for s in labelled]
    preset = resolve_preset(cropped, normalization, stats)
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    events: list[str] = []
    # group by size so that every batch is one tensor
    by_size: dict[int, list[Sample]] = {}
    for s in cropped:
        by_size.setdefault(s.shape[0], []).append(s)
    module = encoder_or_segmentor
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for size, group in by_size.items():
                g = size // patch
                for i in range(0, len(group), batch_size):
                    chunk = group[i : i + batch_size]
                    x = np.stack([view_tensor(s, view, bands, preset) for s in chunk])
                    tokens = forward(torch.from_numpy(x), bands)[:, 1:].float().numpy()  # [B, g*g, D]
                    for s, tok in zip(chunk, tokens, strict=True):
                        bad = ignore_map(s).reshape(g, patch, g, patch).any(axis=(1, 3)).reshape(-1)
                        water = (s.mask == MASK_FLOOD).reshape(g, patch, g, patch).mean(axis=(1, 3))
                        water = water.reshape(-1)
                        keep = ~bad
                        feats.append(tok[keep])
                        labels.append((water[keep] > 0.5).astype(np.int64))
                        events.extend([s.meta.event] * int(keep.sum()))
    finally:
        module.train(was_training)
    if not events:
        raise DataError("every patch contains nodata; nothing to embed")
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels), events


def real_probe_chips(real_root: str | Path, n: int = 40) -> list[tuple[str, list[Sample], tuple[str, ...]]]:
    """The real chips the embedded encoder's water/land probe is measured on, per source.

    40 OMBRIA test chips (VV) and 40 ETCI chips that hold water, both events (VV+VH), chosen by
    sorted chip id so that the model card's rows and the test that recomputes them agree.
    """
    from floodlora.data.sources import discover, read_sample

    root = Path(real_root)
    out: list[tuple[str, list[Sample], tuple[str, ...]]] = []
    ombria = root / "ombria" / "OmbriaS1" / "test"
    if ombria.is_dir():
        refs = sorted(discover([ombria]), key=lambda r: r.chip_id)[:n]
        out.append(("OMBRIA test", [read_sample(r) for r in refs], ("vv",)))
    etci = root / "etci2021"
    if etci.is_dir():
        chips: list[Sample] = []
        for ref in sorted(discover([etci]), key=lambda r: (r.chip_id, r.event)):
            sample = read_sample(ref)
            if sample.mask is not None and 0.05 < float((sample.mask == 1).mean()) < 0.95:
                chips.append(sample)
            if len(chips) >= n:
                break
        out.append(("ETCI", chips, ("vv", "vh")))
    return out


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    test_fraction: float = 0.3,
    max_samples: int | None = 20000,
) -> dict[str, float | int]:
    """Water-vs-land accuracy of a standardised, class-balanced logistic regression on held-out patches.

    ``chance`` is the majority-class accuracy on the test patches (what a constant guess scores), so
    a probe is only informative when ``accuracy`` clearly exceeds it; ``balanced_accuracy`` (chance
    0.5) is the fairer number when water is rare. `max_samples` caps the fit time on big sets.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features must be [N, D] matching labels [N]; got {x.shape} and {y.shape}")
    counts = np.bincount(y, minlength=2)
    if (counts < 2).any():
        raise DataError(f"linear probe needs at least 2 water and 2 land patches; got {counts.tolist()}")
    rng = np.random.default_rng(seed)
    if max_samples is not None and len(y) > max_samples:
        idx, _ = train_test_split(
            np.arange(len(y)), train_size=max_samples, stratify=y, random_state=int(rng.integers(1 << 31))
        )
        x, y = x[idx], y[idx]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    )
    clf.fit(x_tr, y_tr)
    pred = clf.predict(x_te)
    return {
        "accuracy": float((pred == y_te).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_te, pred)),
        "chance": float(max(y_te.mean(), 1 - y_te.mean())),
        "n_train": len(y_tr),
        "n_test": len(y_te),
    }


def tsne_coordinates(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (after PCA to at most 50 dimensions, the usual de-noising step)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 5:
        raise DataError(f"t-SNE needs at least 5 patches, got {n}")
    k = min(50, x.shape[1], n)
    if x.shape[1] > k:
        x = PCA(n_components=k, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    # 500 iterations (sklearn's default is 1000): the layout of a few thousand patches has settled
    # by then, and it halves the time on a 2-core machine.
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=500, random_state=seed)
    # One OpenMP thread: on small shared machines sklearn's Barnes-Hut threads spin against each
    # other (measured 5x slower with 2 threads on a loaded 2-core box than with 1).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x)


def tsne_figure(
    features: np.ndarray,
    labels: np.ndarray,
    events: Sequence[str],
    out_png: str | Path,
    seed: int = 0,
    max_points: int = 3000,
    title: str = "Patch embeddings (t-SNE)",
) -> Path:
    """Two t-SNE panels of the same points, coloured by water/land and by event; written atomically."""
    from matplotlib.figure import Figure

    from floodlora.io import atomic_path

    labels = np.asarray(labels)
    events_arr = np.asarray(list(events))
    n = len(labels)
    if len(features) != n or len(events_arr) != n:
        raise ValueError("features, labels and events must have the same length")
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    xy = tsne_coordinates(features[idx], seed)
    lab, ev = labels[idx], events_arr[idx]

    fig = Figure(figsize=(12, 5.5), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    for value, name, colour in ((0, "land", "#c8a165"), (1, "water", "#1f5fbf")):
        sel = lab == value
        ax1.scatter(xy[sel, 0], xy[sel, 1], s=4, c=colour, label=f"{name} ({int(sel.sum())})", alpha=0.7)
    ax1.set_title("coloured by majority label of the 8x8 patch")
    ax1.legend(markerscale=3, loc="best")
    names = sorted(set(ev.tolist()))
    cmap = _colormap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        sel = ev == name
        label = f"{name} ({int(sel.sum())})"
        ax2.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(i % cmap.N), label=label, alpha=0.7)
    ax2.set_title("coloured by event")
    ax2.legend(markerscale=3, loc="best", fontsize="small")
    for ax in (ax1, ax2):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    fig.suptitle(f"{title}: {len(idx)} patches")
    fig.tight_layout()
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _colormap(name: str) -> Colormap:
    import matplotlib

    return matplotlib.colormaps[name]


def run_embed(
    checkpoint: str | None,
    data: Sequence[str | Path],
    out_dir: str | Path,
    run_dir: str | Path | None = None,
    format: str | None = None,
    split: str | None = None,
    bands: Sequence[str] | None = None,
    view: str = "post",
    normalization: str | None = None,
    max_chips: int = 64,
    crop: int | None = None,
    seed: int = 0,
    max_points: int = 3000,
) -> dict[str, Any]:
    """``floodlora embed``: t-SNE PNG + linear probe JSON for the base encoder or a run's adapted one."""
    from floodlora.analysis.baselines import load_samples
    from floodlora.io import atomic_write_json

    out = Path(out_dir)
    if run_dir is not None:
        from floodlora.runs import load_run

        run = load_run(run_dir, checkpoint=checkpoint or None)
        model: Any = run.model
        bands = list(run.model.bands)
        normalization = normalization or run.config.data.normalization
        if view not in run.model.views:
            raise DataError(f"view {view!r} is not one of the run's views {list(run.model.views)}")
        name = f"{Path(run_dir).name} ({run.base['strategy']})"
    else:
        from floodlora.models.registry import load_encoder

        checkpoint = checkpoint or "embedded"
        model = load_encoder(checkpoint)
        name = checkpoint
    bands = list(bands or ("vv", "vh"))
    samples = load_samples(data, format=format, split=split, max_chips=max_chips, seed=seed)
    feats, labels, events = patch_embeddings(model, samples, bands, normalization or "auto", view, crop)
    probe = linear_probe(feats, labels, seed=seed)
    png = tsne_figure(
        feats,
        labels,
        events,
        out / "tsne.png",
        seed=seed,
        max_points=max_points,
        title=f"Patch embeddings of {name}",
    )
    result = {
        "encoder": name,
        "checkpoint": checkpoint,
        "run": str(run_dir) if run_dir else None,
        "view": view,
        "bands": bands,
        "n_chips": len(samples),
        "n_patches": len(labels),
        "water_fraction": float(np.mean(labels)),
        "linear_probe": probe,
        "tsne_png": str(png),
    }
    atomic_write_json(out / "embeddings.json", result)
    return result


def format_embed(result: dict[str, Any]) -> str:
    """The embed command's printout."""
    p = result["linear_probe"]
    return (
        f"{result['encoder']}: {result['n_patches']} patches from {result['n_chips']} chips "
        f"({100 * result['water_fraction']:.1f}% water)\n"
        f"linear probe water vs land: accuracy {100 * p['accuracy']:.1f}% "
        f"(balanced {100 * p['balanced_accuracy']:.1f}%, chance {100 * p['chance']:.1f}%)\n"
        f"written: {result['tsne_png']}"
    )
