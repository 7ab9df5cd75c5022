"""The `water` prior alone, outside any network, on each held-out water group: which form carries.

Why: the recipe's `water` output (ETCI, C2S-MS, Sen1Floods11 labels) keeps a logistic term per
pixel, while its `flood` output uses the context-quantiles MLP, whose tile-relative features lifted
the flood prior on OMBRIA (``prior_features.py``). Water's labelled events are few (one 8-bit ETCI
event when the other is held out, plus four dB chips), so a richer form may learn rules of one
event. Each row builds the quality benchmark's data for one held-out group (the recipe's
normalisation, every other group in training), fits the prior with ``fit_pixel_prior`` exactly as
training does, and scores the `water` output of the prior alone on every labelled pixel of the
held-out group. Rows marked "other ETCI event only" train on the other ETCI event and nothing else
(the ETCI transfer setting). Results go to ``quality-explorations.json`` (key ``water_prior``).

    python benchmarks/water_prior.py          # about 10 minutes on 2 cores
    python benchmarks/water_prior.py --tiny   # seconds: a few chips per folder, two rows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, set_json_key
from prior_features import threshold_scores

REAL = REPO.parent / "shared" / "data" / "real"
OUT = REPO / "benchmarks" / "results" / "quality-explorations.json"
#: held-out group -> (label, its events (fnmatch), the other ETCI event or None)
GROUPS: dict[str, tuple[str, list[str], str | None]] = {
    "etci-nebraska": ("ETCI Nebraska", ["etci2021-nebraska*"], "etci2021-northal*"),
    "etci-northal": ("ETCI North Alabama", ["etci2021-northal*"], "etci2021-nebraska*"),
    "c2s-s1f11": ("C2S-MS + Sen1Floods11", ["c2s-*", "sen1floods11-*"], None),
}
#: (name, model.prior_features, model.prior_context_kinds): the water output's form follows from both
FORMS: list[tuple[str, str, list[str]]] = [
    ("logistic (the recipe)", "context-quantiles", ["flood"]),
    ("context MLP", "context", ["flood", "water"]),
    ("context-quantiles MLP", "context-quantiles", ["flood", "water"]),
]


def run_row(
    real: Path, held: str, setting: str, form: tuple[str, str, list[str]], tiny: bool
) -> dict[str, Any]:
    """Fit the prior of one form with `held` out and score its `water` output there."""
    import torch

    from floodlora.config import load_config
    from floodlora.data.datamodule import FloodDataModule
    from floodlora.data.sample import MASK_NODATA
    from floodlora.models.factory import build_segmentor
    from floodlora.models.registry import checkpoint_normalization
    from floodlora.training.pixel_prior import fit_pixel_prior

    events = GROUPS[held][1]
    name, features, context_kinds = form
    overrides: dict[str, Any] = {
        "data.roots": [str(real / "etci2021")] if setting == "etci" else [str(real)],
        "data.test_fraction": 0.0,
        "data.holdout_events": events,
        "model.checkpoint": "random:test-micro",  # the prior does not depend on the encoder
        "model.prior_features": features,
        "model.prior_context_kinds": context_kinds,
    }
    config = load_config("cpu-small", overrides)
    t0 = time.perf_counter()
    dm = FloodDataModule(config.data, base_normalization=checkpoint_normalization("embedded"))
    dm.setup("fit")
    model = build_segmentor(config.model, config.data.views, config.data.bands, config.data.crop_size)
    fit = fit_pixel_prior(model, dm.dataset("train"), seed=0, context_kinds=context_kinds)
    assert model.prior is not None
    k = model.outputs.index("water")
    held_chips = dm.dataset("ood")
    probs, truths = [], []
    with torch.no_grad():
        for i in range(min(len(held_chips), 6) if tiny else len(held_chips)):
            item = held_chips[i]
            mask = item["mask"].numpy()
            keep = item["valid"].numpy() & (mask != MASK_NODATA)
            pixels = {v: item["views"][v][None] for v in item["views"]}
            ref = next(iter(pixels.values()))
            logit = model.prior(model.prior_inputs(pixels, 1, *mask.shape, ref))[0, k].numpy()
            probs.append(1.0 / (1.0 + np.exp(-logit[keep])))
            truths.append(mask[keep] == 1)
    out = threshold_scores(np.concatenate(probs), np.concatenate(truths))
    out.update(
        held_out=held,
        trained_on="other ETCI event only" if setting == "etci" else "every other group",
        form=name,
        water_fit=fit.get("water"),
        chips=len(probs),
        wall_seconds=round(time.perf_counter() - t0, 1),
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=str(REAL), help="the real chips (default ../shared/data/real)")
    p.add_argument("--tiny", action="store_true", help="seconds: a few chips per folder, two rows")
    p.add_argument("--json", default=str(OUT), help="results file (key water_prior)")
    args = p.parse_args(argv)
    real = Path(args.real)
    if not (real / "etci2021").is_dir():
        raise SystemExit(f"{real}: no etci2021 folder (pass --real)")
    tiny_ctx = None
    if args.tiny:
        from quality import mini_tree

        tiny_ctx = tempfile.TemporaryDirectory(prefix="water-prior-tiny-")
        real = mini_tree(real, Path(tiny_ctx.name) / "real", per_folder=4)
    plan = [
        (held, setting, form)
        for held, (_, _, other) in GROUPS.items()
        for setting in (["all", "etci"] if other else ["all"])
        for form in FORMS
    ]
    if args.tiny:
        plan = [(h, s, f) for h, s, f in plan if h == "etci-nebraska" and s == "all"][:2]
    rows = []
    try:
        for held, setting, form in plan:
            r = run_row(real, held, setting, form, args.tiny)
            rows.append(r)
            half, best = 100 * r["at_0.5"]["f1"], 100 * r["oracle"]["f1"]
            print(f"{held} ({r['trained_on']}) {form[0]}: F1 at 0.5 {half:.1f}, best {best:.1f}", flush=True)
    finally:
        if tiny_ctx is not None:
            tiny_ctx.cleanup()
    cmd = "python benchmarks/water_prior.py" + (" --tiny" if args.tiny else "")
    value = {"command": cmd, "machine": machine_info(), "tiny": args.tiny, "rows": rows}
    set_json_key(Path(args.json), "water_prior", value)
    return value


if __name__ == "__main__":
    main()
