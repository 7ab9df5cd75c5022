"""One run held out on the dB group, scored chip by chip beside Otsu and "everything is water".

Why: the dB group (C2S-MS + Sen1Floods11) is four 512-px chips scored as one pool of pixels, so one
chip can decide whether a model beats a threshold there. This table shows which chip does it and
what its label looks like (the labelled water fraction; "everything is water" is the F1 of
flagging every valid pixel), and the pooled F1 with each chip left out. Nothing is retrained.
Then what one labelled chip does: the run calibrated on each chip alone (`floodlora adapt`, its
default for a trained run) and scored on the other chips, against the run as it was. With
``--each``, every chip is also scored by a run that held out only its own event, so that the other
three dB chips trained it: what chips in the same units change. Results go to
``quality-explorations.json`` (key ``db_chips``) and the exploration tables of ``docs/quality.md``.

    python benchmarks/quality.py --worker c2s-s1f11 recipe --out-dir RUN
    python benchmarks/quality.py --groups db-jja,db-pxs,db-qxb,db-spain --rows recipe --workdir EACH
    python benchmarks/db_chips.py RUN [--each EACH]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DB_EVENT_RUNS, DB_GROUP_RUN, held_out_run_args, set_json_key

#: The classical rules scored chip by chip: the per-chip Otsu row of the main table, and a map that
#: calls every valid pixel water (its precision is the chip's labelled water fraction).
RULES = {"otsu_chip": {"mode": "chip"}, "all_water": {"threshold": float("inf")}}
SCORES = ("f1", "precision", "recall", "accuracy", "counts")
COUNTS = ("tp", "fp", "fn", "tn")


def _pooled_f1(chips: list[dict[str, Any]], name: str) -> float:
    """F1 of `name`'s counts summed over `chips` (the group's F1 pools pixels, not chip scores)."""
    from floodlora.metrics import scores_from_counts

    return scores_from_counts(**{k: sum(c[name]["counts"][k] for c in chips) for k in COUNTS})["f1"]


def score_chips(run: Path, split: str = "ood", roots: list[Path] | None = None) -> dict[str, Any]:
    """Per chip of `run`'s `split`: the run at its threshold, per-chip Otsu and all-water; then the
    pooled F1 of each with every chip left out in turn."""
    from floodlora.analysis.baselines import run_baseline
    from floodlora.data.sources import discover
    from floodlora.runs import load_run
    from floodlora.training.engine import evaluate_run

    report = evaluate_run(run, split=split, roots=[str(r) for r in roots] if roots else None)
    model = report["per_chip"]
    data_roots = [str(r) for r in roots] if roots else load_run(run).config.data.roots
    refs = [r for r in discover(data_roots) if r.key in model]
    if len(refs) != len(model):
        raise SystemExit(f"{run}: found {len(refs)} of the {len(model)} chips it scored")
    rules = {name: run_baseline("otsu", refs, **kw)["per_chip"] for name, kw in RULES.items()}
    chips = []
    for key, m in model.items():
        water = rules["all_water"][key]["precision"]
        row = {
            "key": key,
            "chip_id": m["chip_id"],
            "event": m["event"],
            "n_pixels": m["n_pixels"],
            "water_fraction": water,
            "run": {k: m[k] for k in SCORES},
        }
        for name, per in rules.items():
            row[name] = {k: per[key][k] for k in SCORES}
        chips.append(row)
    pooled = {name: _pooled_f1(chips, name) for name in ("run", *RULES)}
    without = {
        c["chip_id"]: {name: _pooled_f1([o for o in chips if o is not c], name) for name in pooled}
        for c in chips
    }
    calibrated = calibrate_on_each(run, refs, data_roots[0], {k: v["run"] for k, v in without.items()})
    return {
        "threshold": report["threshold"],
        "pooled": pooled,
        "without": without,
        "calibrated_on_one": calibrated,
        "chips": chips,
    }


def score_each(each: Path, chips: list[dict[str, Any]], roots: list[Path] | None) -> dict[str, Any]:
    """Each chip scored by the run of `each` that held out its event alone (the other dB chips in its
    training), added to the chip's row as ``each``; returns the pooled F1 of those scores and which
    run scored which chip. A chip that no run held out stops the script."""
    from floodlora.training.engine import evaluate_run

    by_key = {c["key"]: c for c in chips}
    runs: dict[str, str] = {}
    for run in sorted(each.glob("*/recipe")):
        report = evaluate_run(run, split="ood", roots=[str(r) for r in roots] if roots else None)
        for key, m in report["per_chip"].items():
            if key in by_key:
                by_key[key]["each"] = {k: m[k] for k in SCORES} | {"threshold": report["threshold"]}
                runs[by_key[key]["chip_id"]] = str(run)
    missing = [c["chip_id"] for c in chips if "each" not in c]
    if missing:
        raise SystemExit(f"{each}: no run held out {', '.join(missing)} ({DB_EVENT_RUNS})")
    return {"pooled": _pooled_f1(chips, "each"), "runs": runs}


def calibrate_on_each(run: Path, refs: list[Any], root: str, before: dict[str, float]) -> dict[str, Any]:
    """Per chip: `run` calibrated on that chip alone (`adapt`'s default for a trained run), and the
    other chips pooled, scored after; `before` (chip id -> the run's pooled F1 without that chip)
    is the same pool as the run scored it already."""
    from adapt import score_run, subset_tree
    from floodlora.training.adapt import adapt

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="db-chips-") as tmp:
        work = Path(tmp)
        for i, ref in enumerate(refs):
            others = subset_tree(Path(root), [r for r in refs if r is not ref], work / f"others-{i}")
            labelled = subset_tree(Path(root), [ref], work / f"chip-{i}")
            result = adapt(run, labelled, work / f"calibrated-{i}")
            ((kind, cal),) = result.summary["output_calibration"].items()
            out[ref.chip_id] = {
                "output": kind,
                "threshold": cal["threshold"],
                "others_before": before[ref.chip_id],
                "others_after": score_run(work / f"calibrated-{i}", others)["f1"],
                "wall_seconds": result.summary["wall_seconds"],
            }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = held_out_run_args(__doc__, argv, each=True)
    each = f" --each EACH  (EACH: {DB_EVENT_RUNS})" if args.each else ""
    result = {
        "command": f"python benchmarks/db_chips.py RUN{each}  {DB_GROUP_RUN}",
        "run": str(args.run),
        **score_chips(args.run, args.split, args.data),
    }
    if args.each:
        result["each"] = score_each(args.each, result["chips"], args.data)
    set_json_key(args.json, "db_chips", result)
    for c in result["chips"]:
        run, otsu = (100 * c[name]["f1"] for name in ("run", "otsu_chip"))
        line = f"{c['chip_id']:40s} run F1 {run:5.1f}  Otsu {otsu:5.1f}"
        print(line + (f"  own event held out {100 * c['each']['f1']:5.1f}" if "each" in c else ""))
    return result


if __name__ == "__main__":
    main()
