"""The flood prior alone, outside any network, on OMBRIA: which per-pixel features carry to new chips.

Why: the recipe's `flood` output starts from a context prior (an MLP over each pixel's features,
fitted before training), and in a minutes-long CPU run the network adds about a point to it on
OMBRIA test. Better features for the prior are the cheapest lever on OMBRIA's groups. Each row
fits the prior's MLP (the same scikit-learn settings, sample and standardisation as
`floodlora.training.pixel_prior`) on one feature set and scores it on every pixel of the held-out
group; nothing else is trained. Results go to ``quality-explorations.json`` (key
``prior_features``) and the exploration tables of ``docs/quality.md``.

    python benchmarks/prior_features.py              # about 15 minutes on 2 cores
    python benchmarks/prior_features.py --tiny       # seconds: a few chips, two rows
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, set_json_key

REAL = REPO.parent / "shared" / "data" / "real"
OUT = REPO / "benchmarks" / "results" / "quality-explorations.json"
#: (held-out group, its chips, the chips the prior is fitted on): the quality benchmark's flood
#: chips for that group (OMBRIA test never trains; FRANCE trains when it is not held out).
GROUPS: dict[str, tuple[tuple[str, str], list[tuple[str, str]]]] = {
    "ombria-test": (("ombria-OmbriaS1", "test"), [("ombria-OmbriaS1", "train"), ("ombria-FRANCE", "*")]),
    "ombria-france": (("ombria-FRANCE", "*"), [("ombria-OmbriaS1", "train")]),
}
#: (name, what it adds, feature parts): parts of `context_features(..., quantiles=True)`.
ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("context", "`context` (the recipe before): value, local means, Otsu level, median", ("context",)),
    ("context + texture", "the same + local standard deviation over 5 and 17 px", ("context", "texture")),
    (
        "context + quantiles",
        "the same + value minus the tile's 10/25/75/90 % quantiles",
        ("context", "quantiles"),
    ),
    (
        "context-quantiles",
        "both (`model.prior_features: context-quantiles`)",
        ("context", "quantiles", "texture"),
    ),
]


def load(real: Path, spec: tuple[str, str], limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(views [N, 2, H, W] pre/post VV, masks [N, H, W] with 255 nodata, valid [N, H, W]) of the chips."""
    from floodlora.data.sources import discover, read_sample

    event, split = spec
    refs = [r for r in discover(real / "ombria") if r.event == event and split in ("*", r.split)]
    refs.sort(key=lambda r: r.chip_id)
    if limit:
        refs = refs[:limit]
    if not refs:
        raise SystemExit(f"{real / 'ombria'}: no chips of {event} ({split})")
    views, masks, valid = [], [], []
    for ref in refs:
        s = read_sample(ref)
        views.append(np.stack([s.views["pre"]["vv"], s.views["post"]["vv"]]).astype(np.float32))
        masks.append(s.mask)
        valid.append(s.valid)
    return np.stack(views), np.stack(masks), np.stack(valid)


def features(views: np.ndarray, centre: float, spread: float) -> dict[str, np.ndarray]:
    """Feature part -> [N, F, H, W], computed by the prior's own functions on normalised views."""
    import torch

    from floodlora.models.prior import CONTEXT_RADII, TILE_QUANTILES, context_features

    x = torch.from_numpy((views - centre) / spread)
    f = context_features(x, quantiles=True).numpy()  # context, then the tile quantiles, then texture
    n_c, n_q = (len(CONTEXT_RADII) + 5) * x.shape[1], len(TILE_QUANTILES) * x.shape[1]
    return {"context": f[:, :n_c], "quantiles": f[:, n_c : n_c + n_q], "texture": f[:, n_c + n_q :]}


def fit_and_score(
    train: np.ndarray, train_y: np.ndarray, train_keep: np.ndarray,
    test: np.ndarray, test_y: np.ndarray, test_keep: np.ndarray, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Fit the MLP on the prior's sample of the training chips; F1/P/R on every labelled test pixel."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from floodlora.models.prior import CONTEXT_HIDDEN
    from floodlora.training.pixel_prior import CONTEXT_MAX_CHIPS, CONTEXT_PIXELS_PER_CHIP

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in rng.permutation(len(train))[:CONTEXT_MAX_CHIPS]:
        idx = np.flatnonzero(train_keep[i])
        idx = rng.choice(idx, size=min(CONTEXT_PIXELS_PER_CHIP, idx.size), replace=False)
        xs.append(train[i].reshape(train.shape[1], -1)[:, idx].T)
        ys.append(train_y[i].reshape(-1)[idx])
    x, y = np.concatenate(xs), np.concatenate(ys)
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-6] = 1.0
    mlp = MLPClassifier(
        (CONTEXT_HIDDEN,), max_iter=40, early_stopping=True, random_state=seed, batch_size=512
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit((x - mean) / scale, y)
    pixels = test.transpose(0, 2, 3, 1)[test_keep]
    prob = mlp.predict_proba((pixels - mean) / scale)[:, 1]
    return {"train_pixels": len(y), **threshold_scores(prob, test_y[test_keep] == 1)}


def threshold_scores(prob: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """F1 / precision / recall at 0.5 and the best F1 of one threshold (0.05 steps) on the labels."""
    out: dict[str, Any] = {}
    best = (-1.0, 0.5)
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        pred = prob >= t
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if t == 0.5:
            out["at_0.5"] = {"f1": f1, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}
        best = max(best, (f1, float(t)))
    out["oracle"] = {"f1": best[0], "threshold": best[1]}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=str(REAL), help="the real chips (default ../shared/data/real)")
    p.add_argument("--tiny", action="store_true", help="seconds: 12 chips per side, two rows")
    p.add_argument("--seeds", default="0,1", help="comma-separated sampling / MLP seeds")
    p.add_argument("--json", default=str(OUT), help="results file (key prior_features)")
    args = p.parse_args(argv)
    real = Path(args.real)
    if not (real / "ombria").is_dir():
        raise SystemExit(f"{real}: no ombria folder (pass --real)")
    limit = 12 if args.tiny else None
    rows = ROWS[::3] if args.tiny else ROWS
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for group, (held, fit_on) in GROUPS.items():
        parts = [load(real, spec, limit) for spec in fit_on]
        tr_views = np.concatenate([v for v, _, _ in parts])
        tr_mask = np.concatenate([m for _, m, _ in parts])
        tr_keep = np.concatenate([k for _, _, k in parts]) & (tr_mask != 255)
        te_views, te_mask, te_valid = load(real, held, limit)
        te_keep = te_valid & (te_mask != 255)
        # one centre and spread from the training chips, as a run's 8-bit preset (every feature moves
        # with the bands and the MLP sees them standardised, so these only keep numbers small)
        centre, spread = float(np.nanmean(tr_views)), float(np.nanstd(tr_views))
        tr_views, te_views = (np.nan_to_num(v, nan=centre) for v in (tr_views, te_views))  # nodata: 0
        tr_f, te_f = features(tr_views, centre, spread), features(te_views, centre, spread)
        for name, what, used in rows:
            for seed in seeds:
                t0 = time.perf_counter()
                train = np.concatenate([tr_f[k] for k in used], axis=1)
                test = np.concatenate([te_f[k] for k in used], axis=1)
                r = fit_and_score(train, tr_mask, tr_keep, test, te_mask, te_keep, seed)
                r.update(held_out=group, features=name, what=what, seed=seed, n_features=int(train.shape[1]),
                         train_chips=len(tr_views), test_chips=len(te_views),
                         wall_seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
                results.append(r)
                half, best = 100 * r["at_0.5"]["f1"], 100 * r["oracle"]["f1"]
                print(f"{group} {name} seed {seed}: F1 at 0.5 {half:.1f}, best {best:.1f}", flush=True)
    cmd = "python benchmarks/prior_features.py" + (" --tiny" if args.tiny else "")
    value = {"command": cmd, "machine": machine_info(), "rows": results}
    set_json_key(Path(args.json), "prior_features", value)
    return value


if __name__ == "__main__":
    main()
