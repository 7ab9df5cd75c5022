"""New water means change: does a run's flood map stay empty when the pre-event view shows the same water?

On every held-out group with a pre-event view (OMBRIA's test split and OMBRIA FRANCE 2021, the only
real chips with one), a recipe run is scored three ways, each with the real pre-event view (F1
against the flood labels) and with the pre-event view replaced by the post-event one (the share of
valid pixels mapped as flood, which should be about 0):

* ``flood-output``: the run's flood output at its threshold (what `predict` mapped before the class step);
* ``minus-pre-water-model``: the same minus the run's own water output on the pre-event view (the class
  step's default for a run with a water output), at several water thresholds;
* ``minus-pre-water-otsu``: the same minus an Otsu level of the pre-event VV (the fallback for a run
  with a flood output only);
* ``minus-flood-on-pre-pair``: the same minus the run's flood output on the pair (pre, pre): whatever
  the flood output flags when nothing changed, seen on the pre-event image. With pre = post this
  removes every flood pixel by construction; the question is what it costs with the real pre view;
* ``minus-persistent``: the same minus pixels the flood output flags on both (pre, pre) and
  (post, post): water the run sees before and after. Also empty with pre = post by construction.

Runs are `benchmarks/quality.py --worker GROUP recipe` run directories (train them with that command;
each takes a few minutes on 2 CPU cores):

    python benchmarks/quality.py --worker ombria-test recipe --real DATA --budget '{...}' \
        --out-dir RUNS/ombria-test
    python benchmarks/new_water.py --real DATA --runs RUNS
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info

GROUPS = {"ombria-test": ("test", "ombria-OmbriaS1"), "ombria-france": ("ood", "ombria-FRANCE")}
WATER_THRESHOLDS = (0.3, 0.5, 0.7)
OUT = Path(__file__).resolve().parent / "results" / "new_water.json"


class Confusion:
    """Micro-averaged counts of one variant: F1 on the real pre view, flood share with pre = post."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0
        self.same_flood = self.same_valid = 0

    def add_real(self, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        self.tp += int((pred & truth & valid).sum())
        self.fp += int((pred & ~truth & valid).sum())
        self.fn += int((~pred & truth & valid).sum())

    def add_same(self, pred: np.ndarray, valid: np.ndarray) -> None:
        self.same_flood += int((pred & valid).sum())
        self.same_valid += int(valid.sum())

    def report(self) -> dict[str, float]:
        p = self.tp / max(self.tp + self.fp, 1)
        r = self.tp / max(self.tp + self.fn, 1)
        return {
            "f1": 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1),
            "precision": p,
            "recall": r,
            "flood_share_pre_equals_post": self.same_flood / max(self.same_valid, 1),
        }


def otsu_water(vv: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pixels darker than the chip's Otsu level (normalised VV: Otsu is invariant to the affine map)."""
    from floodlora.inference.classes import otsu_level

    level = otsu_level(np.where(valid, vv, np.nan))
    return valid & (vv < level)


def score_group(run_dir: Path, real: Path, group: str, limit: int | None) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from floodlora.data.datamodule import FloodDataset, assign_splits, collate
    from floodlora.data.sources import discover
    from floodlora.inference.classes import new_water
    from floodlora.runs import load_run

    split, event = GROUPS[group]
    loaded = load_run(run_dir)
    model = loaded.model.eval()
    d = loaded.config.data
    splits = assign_splits(discover([real]), d)
    refs = [r for r in splits[split] if r.event == event]
    refs = refs[:limit] if limit else refs
    ds = FloodDataset(refs, loaded.presets, d.views, d.bands, crop_size=None, seed=d.seed)
    flood_i, water_i = model.outputs.index("flood"), model.outputs.index("water")
    t = loaded.threshold
    variants = {"flood-output": Confusion(), "minus-pre-water-otsu": Confusion()}
    variants |= {f"minus-flood-on-pre-pair@{tw}": Confusion() for tw in WATER_THRESHOLDS}
    variants["minus-persistent"] = Confusion()
    variants |= {f"minus-pre-water-model@{tw}": Confusion() for tw in WATER_THRESHOLDS}
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=8, shuffle=False, collate_fn=collate):
            views = batch["views"]
            latlon = batch["latlon"]
            times = batch["time"]

            def probs(v: dict[str, Any], tm: dict[str, Any], ll: Any = latlon) -> np.ndarray:
                return torch.sigmoid(model.forward_all(v, tm, ll)).numpy()

            real_p = probs(views, times)
            same_p = probs(
                {"pre": views["post"], "post": views["post"]}, {"pre": times["post"], "post": times["post"]}
            )
            water_pre = probs({"post": views["pre"]}, {"post": times["pre"]})[:, water_i]
            water_post = probs({"post": views["post"]}, {"post": times["post"]})[:, water_i]
            pair_pre = probs(
                {"pre": views["pre"], "post": views["pre"]}, {"pre": times["pre"], "post": times["pre"]}
            )[:, flood_i]
            valid = batch["valid"].numpy() & (batch["mask"].numpy() != 255)
            truth = batch["mask"].numpy() == 1
            for i in range(len(truth)):
                v = valid[i]
                flood_real, flood_same = real_p[i, flood_i] >= t, same_p[i, flood_i] >= t
                variants["flood-output"].add_real(flood_real, truth[i], v)
                variants["flood-output"].add_same(flood_same, v)
                pre_vv, post_vv = views["pre"][i, 0].numpy(), views["post"][i, 0].numpy()
                c = variants["minus-pre-water-otsu"]
                c.add_real(new_water(flood_real, otsu_water(pre_vv, v)), truth[i], v)
                c.add_same(new_water(flood_same, otsu_water(post_vv, v)), v)
                c = variants["minus-persistent"]
                c.add_real(new_water(flood_real, (pair_pre[i] >= t) & flood_same), truth[i], v)
                c.add_same(new_water(flood_same, flood_same), v)
                for tw in WATER_THRESHOLDS:
                    c = variants[f"minus-flood-on-pre-pair@{tw}"]
                    c.add_real(new_water(flood_real, pair_pre[i] >= tw), truth[i], v)
                    c.add_same(new_water(flood_same, same_p[i, flood_i] >= tw), v)
                    c = variants[f"minus-pre-water-model@{tw}"]
                    c.add_real(new_water(flood_real, water_pre[i] >= tw), truth[i], v)
                    c.add_same(new_water(flood_same, water_post[i] >= tw), v)
    return {
        "run": str(run_dir),
        "chips": len(refs),
        "threshold": t,
        "seconds": time.perf_counter() - t0,
        "variants": {k: c.report() for k, c in variants.items()},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, required=True, help="the real data root (shared/data/real)")
    p.add_argument("--runs", type=Path, required=True, help="folder of RUNS/GROUP run directories")
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated groups")
    p.add_argument("--limit", type=int, default=None, help="at most this many chips per group (a smoke run)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "command": "python benchmarks/new_water.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "groups": {},
    }
    for group in args.groups.split(","):
        run = args.runs / group
        if not (run / "weights.safetensors").is_file():
            print(f"{group}: no run in {run}, skipped", file=sys.stderr)
            continue
        result["groups"][group] = score_group(run, args.real, group, args.limit)
        for name, rep in result["groups"][group]["variants"].items():
            print(
                f"{group:14s} {name:28s} F1 {rep['f1']:.4f}  "
                f"pre=post flood {100 * rep['flood_share_pre_equals_post']:.2f}%"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
