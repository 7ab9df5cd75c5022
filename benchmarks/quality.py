"""Real-data flood-map quality, leave one event group out, against classical baselines.

    python benchmarks/quality.py                 # documented budget (see BUDGET), 80-95 min on 2 cores
    python benchmarks/quality.py --tiny          # seconds: the test suite's mode
    python benchmarks/quality.py --from-json     # regenerate docs/quality.md from the JSON only
    python benchmarks/quality.py --precision-check c2s-s1f11   # the recipe on one group, fp32 vs bf16
    python benchmarks/quality.py --seeds 1,2 --groups ombria-france --rows recipe,frozen,full
                                                 # model rows again with other seeds (quality-seeds.json)

For every labelled event group under ``../shared/data/real`` (OMBRIA test, OMBRIA FRANCE 2021, ETCI
Nebraska, ETCI North Alabama, C2S-MS + Sen1Floods11) each model row trains on all the *other*
groups' chips (the OMBRIA test split is never trained on: it is the dataset's own test split) and
scores the held-out group at the run's own threshold (val-optimal on the training events' val
split) and at 0.5. Classical rows score the same chips: Otsu per chip, Otsu per event, a threshold
fitted on the training chips of the same source (the 8-bit scalings differ between sources, so a
threshold does not transfer across them), and change detection where a pre-event view exists.

Each model row runs in its own process, so its peak RSS is its own. Results go to
``benchmarks/results/quality.json``; the section of ``docs/quality.md`` between the markers is
generated from that JSON.

One run per row cannot separate a method from run-to-run spread on a held-out event (a new seed
moves the recipe on ETCI Nebraska by several points). ``--seeds`` trains chosen model rows again
with other seeds (``train.seed`` and ``data.seed``: the weights' initialisation, the draws and the
train/val split) into ``quality-seeds.json``, one entry per group, row and seed, merged into what
the file already holds; the doc's table "Over seeds" puts them beside the main table's seed-0 run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import command_line, parse_overrides, peak_rss_kib

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
SECTION_BEGIN = "<!-- benchmarks/quality.py: begin -->"
SECTION_END = "<!-- benchmarks/quality.py: end -->"
README_BEGIN = "<!-- benchmarks/quality.py readme: begin -->"
README_END = "<!-- benchmarks/quality.py readme: end -->"


@dataclass(frozen=True)
class Group:
    """One held-out event group: the events it holds (fnmatch patterns) and its source format."""

    name: str
    label: str
    events: tuple[str, ...]
    formats: tuple[str, ...]
    native_test: bool = False  # OMBRIA test: the dataset's own test split, not an event
    default: bool = True  # in the main table; False: only where --groups names it


GROUPS: tuple[Group, ...] = (
    Group("ombria-test", "OMBRIA test", ("ombria-OmbriaS1",), ("ombria",), native_test=True),
    Group("ombria-france", "OMBRIA FRANCE 2021", ("ombria-FRANCE",), ("ombria",)),
    Group("etci-nebraska", "ETCI Nebraska", ("etci2021-nebraska",), ("etci2021",)),
    Group("etci-northal", "ETCI North Alabama", ("etci2021-northal",), ("etci2021",)),
    Group("c2s-s1f11", "C2S-MS + Sen1Floods11", ("c2s-*", "sen1floods11-*"), ("c2s", "sen1floods11")),
    # One dB event at a time, the other three dB chips in training: does the dB group lose to Otsu
    # because no chip in its units trains the model when the whole group is held out?
    Group("db-jja", "C2S-MS jja", ("c2s-jja",), ("c2s",), default=False),
    Group("db-pxs", "C2S-MS pxs", ("c2s-pxs",), ("c2s",), default=False),
    Group("db-qxb", "C2S-MS qxb", ("c2s-qxb",), ("c2s",), default=False),
    Group("db-spain", "Sen1Floods11 Spain", ("sen1floods11-*",), ("sen1floods11",), default=False),
)


@dataclass(frozen=True)
class ModelRow:
    """A model row: a label and the config overrides on top of the recommended recipe."""

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    default: bool = True  # in the main table; False: only where --rows names it


RECIPE = "cpu-small"  # the packaged config that is the recommended recipe
MODEL_ROWS: tuple[ModelRow, ...] = (
    ModelRow(
        "recipe",
        "Recommended recipe (cpu-small: LoRA r-8, hires-bn decoder, pixel dropout 0.5, flood + water "
        "outputs, context prior with tile quantiles for flood, fitted on whole chips)",
    ),
    ModelRow("lora-paper", "LoRA r-8, paper decoder", {"model.decoder": "paper"}),
    ModelRow(
        "frozen",
        "Frozen encoder, hires-bn decoder",
        {"model.strategy": "frozen", "train.feature_cache": "auto"},
    ),
    ModelRow("full", "Full fine-tuning, hires-bn decoder", {"model.strategy": "full"}),
    ModelRow(
        "recipe-swa",
        "Recommended recipe with weight averaging (train.weight_averaging: swa)",
        {"train.weight_averaging": "swa"},
        default=False,
    ),
)
#: The documented budget, the same for every model row: half the recipe's epochs and fewer batches,
#: so that 5 groups x 4 model rows take 80-95 minutes on 2 cores (the JSON records each run's time).
BUDGET: dict[str, Any] = {
    "train.max_epochs": 4,
    "train.limit_train_batches": 20,
    "train.limit_val_batches": 6,
}
TINY_BUDGET: dict[str, Any] = {
    "train.max_epochs": 1,
    "train.limit_train_batches": 2,
    "train.limit_val_batches": 1,
    "data.batch_size": 2,
    "data.crop_size": 32,
    "data.limit_train": 12,
    "model.checkpoint": "random:test-micro",
}


def _chip_key(name: str) -> str:
    """A file's chip key: its name without role prefixes / band suffixes and extension."""
    import re

    stem = name.rsplit(".", 1)[0]
    return re.sub(r"^(S1_after_|S1_before_|S1_mask_|imafter_|imbefore_|gt_)|_(vv|vh)$", "", stem)


def mini_tree(real: Path, dest: Path, per_folder: int = 8) -> Path:
    """A symlinked copy of `real` with `per_folder` whole chips of every chip folder (tiny mode).

    The readers pair a chip's files across sibling folders (BEFORE / AFTER / MASK, vv / vh / label)
    by a shared key in their names; the first keys common to all siblings are kept. Folders of a
    few files (one C2S or Sen1Floods11 chip) are linked whole.
    """
    folders = sorted(p for p in real.rglob("*") if p.is_dir())
    by_parent: dict[Path, list[Path]] = {}
    for folder in folders:
        by_parent.setdefault(folder.parent, []).append(folder)
    for folder in folders:
        files = sorted(f for f in folder.iterdir() if f.is_file())
        if not files:
            continue
        target = dest / folder.relative_to(real)
        target.mkdir(parents=True, exist_ok=True)
        if len(files) > 4:
            siblings = [d for d in by_parent[folder.parent] if sum(1 for f in d.iterdir() if f.is_file()) > 4]
            common = set.intersection(
                *({_chip_key(f.name) for f in d.iterdir() if f.is_file()} for d in siblings)
            )
            keep = set(sorted(common)[:per_folder])
            files = [f for f in files if _chip_key(f.name) in keep]
        for f in files:
            (target / f.name).symlink_to(f.resolve())
    return dest


def rescore(result: dict[str, Any], work: Path, real: Path) -> dict[str, Any]:
    """Score the kept model runs of `result` again on their held-out group of `real` (``--rescore``),
    adding the diagnostics newer than the runs (``event_otsu``) without training again. Each row's F1
    at its own threshold is scored again too (``rescored_f1``): it must equal the stored one."""
    from tqdm import tqdm

    from floodlora.training.engine import evaluate_run

    native = {g.name: g.native_test for g in GROUPS}
    todo = [r for r in result["rows"] if "error" not in r and r["row"] in {m.name for m in MODEL_ROWS}]
    missing = [f"{r['group']}/{r['row']}" for r in todo if not (work / r["group"] / r["row"]).is_dir()]
    if missing:
        raise SystemExit(f"{work}: no kept run for {', '.join(missing[:3])} (pass the run's --workdir)")
    for r in tqdm(todo, desc="rescore", unit="run"):
        split = "test" if native[r["group"]] else "ood"
        report = evaluate_run(work / r["group"] / r["row"], roots=[str(real)], split=split)
        r["event_otsu"] = report["event_otsu"]
        r["rescored_f1"] = report["f1"]
    return result


def _select(names: str | None, items: Sequence[Any], option: str, what: str) -> list[Any]:
    """The `items` named in `names` (comma-separated), or those with ``default`` set; an unknown
    name stops the script with the known ones."""
    if not names:
        return [i for i in items if i.default]
    wanted = names.split(",")
    unknown = sorted(set(wanted) - {i.name for i in items})
    if unknown:
        known = ", ".join(i.name for i in items)
        raise SystemExit(f"{option}: unknown {what} {', '.join(unknown)}; choose from {known}")
    return [i for i in items if i.name in wanted]


def select_groups(names: str | None) -> list[Group]:
    """The held-out groups named in `names`, or the main table's default groups."""
    return _select(names, GROUPS, "--groups", "group(s)")


def select_rows(names: str | None) -> list[ModelRow]:
    """The model rows named in `names`, or the main table's default rows."""
    return _select(names, MODEL_ROWS, "--rows", "model row(s)")


def _peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM), in GB (10^6 kB, as the committed results record it)."""
    return peak_rss_kib() / 1e6


def run_config(real: Path, group: Group, row: ModelRow, budget: dict[str, Any]) -> Any:
    """The RunConfig of one model row with `group` held out."""
    from floodlora.config import load_config

    overrides: dict[str, Any] = {
        "data.roots": [str(real)],
        "data.test_fraction": 0.0,  # every chip is train / val, except OMBRIA's native test split
        "data.holdout_events": [] if group.native_test else list(group.events),
        **budget,
        **row.overrides,
    }
    return load_config(RECIPE, overrides)


def _score(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("f1", "iou", "precision", "recall", "accuracy")
    return {k: report[k] for k in keys} | {"n_chips": report.get("n_chips")}


def worker(real: Path, group_name: str, row_name: str, budget: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one model row with one group held out; score that group. Runs in its own process."""
    from floodlora.training.engine import train_run

    group = next(g for g in GROUPS if g.name == group_name)
    row = next(r for r in MODEL_ROWS if r.name == row_name)
    config = run_config(real, group, row, budget)
    t0 = time.perf_counter()
    result = train_run(config, out, score=("test",) if group.native_test else ("ood",))
    wall = time.perf_counter() - t0
    held = result.metrics["test" if group.native_test else "ood"]
    if group.native_test:  # the test split holds OMBRIA's chips only (test_fraction 0)
        assert set(held["per_event"]) <= set(group.events), held["per_event"].keys()
    acc = result.accounting
    return {
        "group": group.name,
        "row": row.name,
        "threshold": result.metrics["best_threshold"],
        "at_run_threshold": _score({**held["at_best_threshold"], "n_chips": held["n_chips"]}),
        "at_0.5": _score(held),
        "val_f1_at_run_threshold": result.metrics["val"]["at_best_threshold"]["f1"],
        # the held-out group's own best threshold (its labels used): a diagnostic, not a result
        "oracle": held.get("oracle"),
        # each held-out event at Otsu's threshold on the model's own probabilities (labels unused)
        "event_otsu": held.get("event_otsu"),
        # F1 at every grid threshold on val (per label kind) and on the held-out group: other rules
        # for the operating point, scored on this same run (table "The run's threshold")
        "threshold_tolerance": config.train.threshold_tolerance,
        "val_f1_curve": result.metrics["val"].get("f1_curve"),
        "held_f1_curve": held.get("f1_curve"),
        "wall_seconds": wall,
        "peak_rss_gb": _peak_rss_gb(),
        "trainable_params": acc.get("trainable_params"),
        "epochs": acc.get("epochs"),
        "train_chips": acc["data"]["splits"]["train"],
        "precision_used": acc.get("precision"),
    }


def _run_worker(
    real: Path, group: Group, row: ModelRow, budget: dict[str, Any], work: Path
) -> dict[str, Any]:
    out = work / group.name / row.name
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        group.name,
        row.name,
        "--real",
        str(real),
        "--budget",
        json.dumps(budget),
        "--out-dir",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"group": group.name, "row": row.name, "error": " | ".join(tail)[-400:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rows(real: Path, group: Group, limit: int | None = None) -> list[dict[str, Any]]:
    """Otsu per chip / per event, a threshold fitted on the same source's training chips, change."""
    from floodlora.analysis.baselines import run_baseline
    from floodlora.config import DataConfig
    from floodlora.data.datamodule import assign_splits
    from floodlora.data.sources import discover

    cfg = DataConfig(
        roots=[str(real)], test_fraction=0.0, holdout_events=[] if group.native_test else list(group.events)
    )
    splits = assign_splits(discover([real]), cfg)
    held = [r for r in splits["test" if group.native_test else "ood"] if r.format in group.formats]
    train = [r for r in splits["train"] if r.format in group.formats]
    if limit is not None:
        held, train = held[:limit], train[:limit]
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("otsu-chip", "Otsu VV+VH per chip", {"method": "otsu", "mode": "chip"}),
        ("otsu-event", "Otsu VV+VH per event", {"method": "otsu", "mode": "event"}),
    ]
    if train:
        rows.append(
            (
                "fitted",
                "Threshold fitted on the same source's training chips",
                {"method": "otsu", "mode": "fitted"},
            )
        )
    if group.formats == ("ombria",):
        rows.append(
            ("change-chip", "Change (post - pre), per-chip Otsu", {"method": "change", "mode": "chip"})
        )
        if train:
            rows.append(
                ("change-fitted", "Change (post - pre), fitted", {"method": "change", "mode": "fitted"})
            )
    out = []
    for name, label, kw in rows:
        t0 = time.perf_counter()
        rep = run_baseline(
            kw["method"],
            held,
            "both",
            kw["mode"],
            train=train if kw["mode"] == "fitted" else None,
            per_chip=False,
        )
        out.append(
            {
                "group": group.name,
                "row": name,
                "label": label,
                "at_run_threshold": _score(rep),
                "wall_seconds": time.perf_counter() - t0,
                "threshold": rep["baseline"].get("threshold_value"),
            }
        )
    return out


def precision_check(
    real: Path, group: Group, budget: dict[str, Any], work: Path, tiny: bool = False
) -> dict[str, Any]:
    """The recipe with `group` held out, trained in fp32 and in the bf16 that `auto` picks on a CPU
    with fast bf16 (floodlora.precision), same seed and budget: the held-out F1 difference decides
    whether `auto` may train in bf16 on CPU (at most MAX_F1_DELTA). Tiny mode compares on any CPU."""
    from floodlora.precision import CPU_BF16_AUTO_TRAIN, MAX_F1_DELTA, cpu_bf16_fast

    fast, reason = cpu_bf16_fast()
    out: dict[str, Any] = {
        "group": group.name,
        "label": group.label,
        "cpu_bf16_fast": fast,
        "cpu_bf16_reason": reason,
        "auto_trains_bf16": CPU_BF16_AUTO_TRAIN,
        "bound_f1_points": 100 * MAX_F1_DELTA,
        "rows": {},
    }
    if not fast and not tiny:
        out["skipped"] = "this CPU has no fast bf16: auto is fp32 here, nothing to compare"
        return out
    recipe = next(r for r in MODEL_ROWS if r.name == "recipe")
    for precision in ("32-true", "bf16-mixed"):
        r = _run_worker(real, group, recipe, {**budget, "train.precision": precision}, work / precision)
        out["rows"][precision] = r
        msg = r.get("error") or f"F1 {_pct(r['at_run_threshold']['f1'])} ({r['wall_seconds']:.0f} s)"
        print(f"{group.name:15s} recipe {precision:10s} {msg}", flush=True)
    rows = out["rows"]
    if all("error" not in r for r in rows.values()):
        f32, b16 = (rows[k]["at_run_threshold"]["f1"] for k in ("32-true", "bf16-mixed"))
        out["delta_f1_points"] = 100 * (b16 - f32)
        out["within_bound"] = abs(b16 - f32) <= MAX_F1_DELTA
        out["bf16_speedup"] = rows["32-true"]["wall_seconds"] / rows["bf16-mixed"]["wall_seconds"]
    return out


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per row: mean F1 / IoU over groups, and which targets are met."""
    groups = [g["name"] for g in result["groups"]]
    rows: dict[str, dict[str, Any]] = {}
    for r in result["rows"]:
        if "error" in r:
            continue
        rows.setdefault(r["row"], {})[r["group"]] = r
    means: dict[str, dict[str, float | None]] = {}
    for name, per in rows.items():
        complete = all(g in per for g in groups)
        means[name] = {
            "f1": sum(per[g]["at_run_threshold"]["f1"] for g in groups) / len(groups) if complete else None,
            "iou": sum(per[g]["at_run_threshold"]["iou"] for g in groups) / len(groups) if complete else None,
        }
    classical = [n for n in means if n not in {m.name for m in MODEL_ROWS} and means[n]["f1"] is not None]
    best_classical = max(classical, key=lambda n: means[n]["f1"] or 0.0) if classical else None
    recipe = means.get("recipe", {}).get("f1")
    targets = {}
    if recipe is not None and best_classical is not None:
        targets["mean_f1_5_points_above_best_classical"] = {
            "recipe": recipe,
            "best_classical": best_classical,
            "best_classical_f1": means[best_classical]["f1"],
            "met": recipe >= (means[best_classical]["f1"] or 0.0) + 0.05,
        }
    for g in ("etci-nebraska", "etci-northal"):
        fit = rows.get("fitted", {}).get(g)
        rec = rows.get("recipe", {}).get(g)
        if fit and rec:
            targets[f"{g}_at_least_fitted"] = {
                "recipe": rec["at_run_threshold"]["f1"],
                "fitted": fit["at_run_threshold"]["f1"],
                "met": rec["at_run_threshold"]["f1"] >= fit["at_run_threshold"]["f1"],
            }
    rec = rows.get("recipe", {}).get("ombria-test")
    if rec:
        f1 = rec["at_run_threshold"]["f1"]
        targets["ombria_test_f1_75"] = {"recipe": f1, "met": f1 >= 0.75}
    if not result.get("tiny") and result.get("wall_seconds"):  # the documented budget's promise
        minutes = result["wall_seconds"] / 60
        targets["benchmark_within_90_min"] = {"minutes": minutes, "met": minutes <= 90}
    return {"means": means, "best_classical": best_classical, "targets": targets}


def markdown(result: dict[str, Any]) -> str:
    groups = result["groups"]
    summary = summarise(result)
    labels = {r.name: r.label for r in MODEL_ROWS}
    for r in result["rows"]:
        labels.setdefault(r["row"], r.get("label", r["row"]))
    by: dict[tuple[str, str], dict[str, Any]] = {(r["row"], r["group"]): r for r in result["rows"]}
    order = [m.name for m in MODEL_ROWS] + [
        n
        for n in dict.fromkeys(r["row"] for r in result["rows"])
        if n not in labels or n not in {m.name for m in MODEL_ROWS}
    ]
    order = list(dict.fromkeys(order))
    head = "| Method | " + " | ".join(f"{g['label']} F1 / IoU" for g in groups) + " | Mean F1 | Mean IoU |"
    lines = [
        SECTION_BEGIN,
        "",
        f"Command: `{result['command']}` ({result['created']}, {result['machine']['cpus']} CPUs, "
        f"torch {result['machine']['torch']}, {result['wall_seconds'] / 60:.0f} min in all).",
        "",
        f"Budget per model row: {result['budget_text']}.",
        "",
        "F1 / IoU in % on each held-out group, at each row's own threshold (models: chosen on val "
        'chips of the training events, see the table "The run\'s threshold"; classical rows: their '
        "own rule):",
        "",
        head,
        "|---" * (len(groups) + 3) + "|",
    ]
    for name in order:
        if not any((name, g["name"]) in by for g in groups):
            continue
        cells = []
        for g in groups:
            r = by.get((name, g["name"]))
            if r is None:
                cells.append("n/a")
            elif "error" in r:
                cells.append("error")
            else:
                cells.append(f"{_pct(r['at_run_threshold']['f1'])} / {_pct(r['at_run_threshold']['iou'])}")
        m = summary["means"].get(name, {})
        lines.append(
            f"| {labels.get(name, name)} | "
            + " | ".join(cells)
            + f" | {_pct(m.get('f1'))} | {_pct(m.get('iou'))} |"
        )
    lines += ["", "Precision / recall in % (same thresholds), and the models' F1 at threshold 0.5:", ""]
    lines += [
        "| Method | " + " | ".join(f"{g['label']} P / R" for g in groups) + " | F1 at 0.5 per group |",
        "|---" * (len(groups) + 2) + "|",
    ]
    for name in order:
        if not any((name, g["name"]) in by for g in groups):
            continue
        cells, half = [], []
        for g in groups:
            r = by.get((name, g["name"]))
            if r is None or "error" in r:
                cells.append("n/a")
                continue
            s = r["at_run_threshold"]
            cells.append(f"{_pct(s['precision'])} / {_pct(s['recall'])}")
            if "at_0.5" in r:
                half.append(_pct(r["at_0.5"]["f1"]))
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + f" | {', '.join(half) or '–'} |")
    lines += [
        "",
        "Wall time (s) and peak RSS (GB) per model row and held-out group:",
        "",
        "| Method | " + " | ".join(g["label"] for g in groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    for m in MODEL_ROWS:
        cells = []
        for g in groups:
            r = by.get((m.name, g["name"]))
            cells.append(
                "n/a"
                if r is None or "error" in r
                else f"{r['wall_seconds']:.0f} s, {r['peak_rss_gb']:.2f} GB"
            )
        if any(c != "n/a" for c in cells):
            lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines += [
            "",
            "Rows that failed: " + "; ".join(f"{r['row']} / {r['group']}: {r['error']}" for r in errors),
        ]
    lines += _event_otsu_table(result, groups, order, labels, by)
    lines += _threshold_rule_table(result, groups, order, labels, by)
    lines += ["", "Targets:", ""]
    t = summary["targets"]
    if "mean_f1_5_points_above_best_classical" in t:
        x = t["mean_f1_5_points_above_best_classical"]
        lines.append(
            f"* Mean F1 of the recipe {_pct(x['recipe'])} vs the best classical mean "
            f"({labels.get(x['best_classical'])}) {_pct(x['best_classical_f1'])} + 5: "
            f"**{'met' if x['met'] else 'not met'}**."
        )
    for g in ("etci-nebraska", "etci-northal"):
        x = t.get(f"{g}_at_least_fitted")
        if x:
            lines.append(
                f"* {g}: recipe F1 {_pct(x['recipe'])} vs fitted threshold {_pct(x['fitted'])}: "
                f"**{'met' if x['met'] else 'not met'}**."
            )
    if "ombria_test_f1_75" in t:
        x = t["ombria_test_f1_75"]
        lines.append(f"* OMBRIA test F1 {_pct(x['recipe'])} >= 75: **{'met' if x['met'] else 'not met'}**.")
    if "benchmark_within_90_min" in t:
        x = t["benchmark_within_90_min"]
        lines.append(
            f"* The whole benchmark in {x['minutes']:.0f} min, within 90 on 2 cores: "
            f"**{'met' if x['met'] else 'not met'}**."
        )
    json_path = Path(result["json"])
    seeds_path = (json_path if json_path.is_absolute() else REPO / json_path).with_name(SEEDS)
    lines += seeds_markdown(result, json.loads(seeds_path.read_text()) if seeds_path.is_file() else None)
    lines += ["", f"Raw numbers: `benchmarks/results/{Path(result['json']).name}`."]
    lines += explorations_markdown(
        (json_path if json_path.is_absolute() else REPO / json_path).with_name(EXPLORATIONS)
    )
    lines += ["", SECTION_END]
    return "\n".join(lines)


def _event_otsu_table(
    result: dict[str, Any],
    groups: list[dict[str, Any]],
    order: list[str],
    labels: dict[str, str],
    by: dict[tuple[str, str], dict[str, Any]],
) -> list[str]:
    """Model rows at a label-free operating point per held-out event, next to their own threshold."""
    if not any(r.get("event_otsu") for r in result["rows"]):
        return []
    lines = [
        "",
        "Label-free operating point: each held-out event scored at Otsu's threshold on the model's own "
        "probabilities for its chips (the event's labels unused; a responder can set it on a new scene). "
        "F1 in % at the row's own threshold → at that threshold (the threshold in brackets; the dB group's "
        "four events each get their own):",
        "",
        "| Method | " + " | ".join(g["label"] for g in groups) + " | Mean F1 |",
        "|---" * (len(groups) + 2) + "|",
    ]
    for name in order:
        cells, scores = [], []
        for g in groups:
            r = by.get((name, g["name"]))
            otsu = (r or {}).get("event_otsu")
            if not otsu:
                cells.append("n/a")
                continue
            ts = list(otsu["thresholds"].values())
            t = f"{ts[0]:.2f}" if len(ts) == 1 else f"{min(ts):.2f}-{max(ts):.2f}"
            cells.append(f"{_pct(r['at_run_threshold']['f1'])} → {_pct(otsu['f1'])} ({t})")
            scores.append(otsu["f1"])
        if any(c != "n/a" for c in cells):
            mean = _pct(sum(scores) / len(scores)) if len(scores) == len(groups) else "n/a"
            lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + f" | {mean} |")
    rescored = result.get("rescored")
    if rescored:
        again = [r for r in result["rows"] if "rescored_f1" in r]
        same = all(abs(r["rescored_f1"] - r["at_run_threshold"]["f1"]) < 1e-6 for r in again)
        lines += [
            "",
            f"Scored again from the kept runs with `{rescored['command']}` ({rescored['created']}); the F1 "
            f"at each row's own threshold {'matched' if same else 'did NOT match'} the table above.",
        ]
    return lines


#: the operating-point rules the table "The run's threshold" scores on every model run's curves
THRESHOLD_RULES: tuple[tuple[str, float], ...] = (
    ("val-optimal", 0.0),
    ("within 0.5 point", 0.005),
    ("within 1 point", 0.01),
    ("within 2 points", 0.02),
)


def held_out_by_rule(row: dict[str, Any]) -> dict[str, float] | None:
    """F1 on the held-out group at each rule's threshold, chosen on val chips of the group's own
    label kind (the output the group is scored with) in the same run; None without curves."""
    val, held = row.get("val_f1_curve"), row.get("held_f1_curve")
    if not val or not held:
        return None
    kinds = [k for k in held if k != "all"]
    kind = kinds[0] if len(kinds) == 1 and kinds[0] in val else "all"
    from floodlora.metrics import operating_index  # the rule training applies, on the stored curve

    return {name: held["all"][operating_index(val[kind], tol)] for name, tol in THRESHOLD_RULES}


def _threshold_rule_table(
    result: dict[str, Any],
    groups: list[dict[str, Any]],
    order: list[str],
    labels: dict[str, str],
    by: dict[tuple[str, str], dict[str, Any]],
) -> list[str]:
    """Each model run's held-out F1 under each operating-point rule, from its own F1 curves."""
    scored = {key: held_out_by_rule(r) for key, r in by.items()}
    if not any(scored.values()):
        return []
    names = [name for name, _ in THRESHOLD_RULES]
    lines = [
        "",
        "The run's threshold: F1 in % on each held-out group at the threshold each rule picks on the "
        "same run's val chips of the group's label kind (val-optimal; the highest within 0.5, 1 or 2 "
        "F1 points of val's best, the recipe using 1), read from the run's F1 curves (grid of 0.01). "
        "Cells: " + " / ".join(names) + ":",
        "",
        "| Method | " + " | ".join(g["label"] for g in groups) + " | Mean F1 per rule |",
        "|---" * (len(groups) + 2) + "|",
    ]
    for name in order:
        cells, per_rule = [], {n: [] for n in names}
        for g in groups:
            f1s = scored.get((name, g["name"]))
            if not f1s:
                cells.append("n/a")
                continue
            cells.append(" / ".join(_pct(f1s[n]) for n in names))
            for n in names:
                per_rule[n].append(f1s[n])
        if all(c == "n/a" for c in cells):
            continue
        full = all(len(v) == len(groups) for v in per_rule.values())
        means = " / ".join(_pct(sum(v) / len(v)) for v in per_rule.values()) if full else "n/a"
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + f" | {means} |")
    return lines


EXPLORATIONS = "quality-explorations.json"
SEEDS = "quality-seeds.json"


def _comparison_table(
    runs: list[dict[str, Any]], title: str, what: str, ours: str, theirs: str, change: str | None = None
) -> list[str]:
    """Exploratory runs against the recipe row, per held-out group (F1 / precision / recall); with
    `change`, a column of that name says what each run changed (its ``what``); runs that kept their
    ``oracle`` diagnostic get a column for it (best F1 on the group's own labels, and where)."""
    if not runs:
        return []
    best = any(r.get("oracle") for r in runs)
    head = ["Held out", *([change] if change else []), ours, "At 0.5", "Threshold"]
    head += [*(["Best on own labels (at)"] if best else []), theirs]
    lines = [
        "",
        f"### {title}",
        "",
        what + " F1 / precision / recall in % at the run's threshold:",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in runs:
        ours_cell, theirs_cell = (
            " / ".join(_pct(m[k]) for k in ("f1", "precision", "recall"))
            for m in (r["at_run_threshold"], r["compared_with"])
        )
        cells = [r["held_out"], *([r["what"]] if change else []), ours_cell, _pct(r["at_0.5"]["f1"])]
        cells.append(f"{r['threshold']:.2f}")
        if best:
            o = r.get("oracle")
            cells.append(f"{_pct(o['f1'])} ({o['threshold']:.2f})" if o else "-")
        cells.append(theirs_cell)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _db_scale_table(result: dict[str, Any] | None) -> list[str]:
    """`benchmarks/db_scale.py`: one run held out on the dB group, its dB chips under other presets."""
    if not result:
        return []
    lines = [
        "",
        "### The scale of dB data",
        "",
        "One recipe run trained with the dB group (C2S-MS + Sen1Floods11) held out, so on 8-bit "
        "sources only, scored on that group with its calibrated chips under dB presets of other "
        f"centres and spreads; weights and threshold unchanged. Command: `{result['command']}`. "
        "F1 / precision / recall in %:",
        "",
        "| dB preset | Centre VV / VH (dB) | Spread VV / VH (dB) | F1 / P / R | Threshold "
        "| Best on own labels (at) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m, o = r["at_run_threshold"], r["oracle"]
        cells = [
            r["preset"],
            " / ".join(f"{r['centre_db'][b]:.2f}" for b in ("vv", "vh")),
            " / ".join(f"{r['spread_db'][b]:.2f}" for b in ("vv", "vh")),
            " / ".join(_pct(m[k]) for k in ("f1", "precision", "recall")),
            f"{r['threshold']:.2f}",
            f"{_pct(o['f1'])} ({o['threshold']:.2f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _db_chips_table(result: dict[str, Any] | None) -> list[str]:
    """`benchmarks/db_chips.py`: the dB group chip by chip, and pooled with each chip left out."""
    if not result:
        return []
    lines = [
        "",
        "### The dB group chip by chip",
        "",
        "The recipe run trained with the dB group held out (the main table's run), its four chips "
        "scored one by one at the run's threshold "
        f"({result['threshold']:.2f}) beside the main table's per-chip Otsu and a map that calls "
        "every valid pixel water (its precision is the chip's labelled water fraction). The group's "
        "F1 pools the pixels of all four, so the last columns give the pooled F1 with that chip left "
        f"out. Command: `{result['command']}`. F1 / precision / recall in %:",
        "",
        "| Chip | Event | Labelled water | Run F1 / P / R | Otsu per chip F1 / P / R | Everything water F1 "
        "| Pooled without it: run / Otsu |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["chips"]:
        out = result["without"][c["chip_id"]]
        cells = [
            c["chip_id"],
            c["event"],
            f"{_pct(c['water_fraction'])} %",
            " / ".join(_pct(c["run"][k]) for k in ("f1", "precision", "recall")),
            " / ".join(_pct(c["otsu_chip"][k]) for k in ("f1", "precision", "recall")),
            _pct(c["all_water"]["f1"]),
            f"{_pct(out['run'])} / {_pct(out['otsu_chip'])}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    pooled = result["pooled"]
    lines += ["", f"All four pooled: run {_pct(pooled['run'])}, Otsu per chip {_pct(pooled['otsu_chip'])}."]
    calibrated = result.get("calibrated_on_one")
    if calibrated:
        lines += [
            "",
            "One labelled chip: the same run calibrated on that chip alone (`floodlora adapt RUN --data "
            "CHIP`, its default for a trained run: the output's operating point moves, nothing trains), "
            "then the other three chips pooled, before → after, beside per-chip Otsu on the same three. "
            "F1 in %:",
            "",
            "| Calibrated on | Threshold it set | Other chips: run before → after | Otsu per chip on them |",
            "|---|---|---|---|",
        ]
        for chip_id, c in calibrated.items():
            otsu = result["without"][chip_id]["otsu_chip"]
            moved = f"{_pct(c['others_before'])} → {_pct(c['others_after'])}"
            lines.append(f"| {chip_id} | {c['threshold']:.2f} | {moved} | {_pct(otsu)} |")
    each = result.get("each")
    if each:
        lines += [
            "",
            "Chips in the same units: each chip scored by a run of the same recipe and budget that held "
            "out only its own event, so the other three dB chips were in its training (among some 1,300 "
            "8-bit chips; `data.balance_sources` gives each source the square root of its size). "
            "F1 / precision / recall in %:",
            "",
            "| Chip | No dB chip in training (above) | The other dB chips in training | Threshold "
            "| Otsu per chip |",
            "|---|---|---|---|---|",
        ]
        for c in result["chips"]:
            keys = ("f1", "precision", "recall")
            run, own, otsu = (" / ".join(_pct(c[n][k]) for k in keys) for n in ("run", "each", "otsu_chip"))
            cells = [c["chip_id"], run, own, f"{c['each']['threshold']:.2f}", otsu]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"All four pooled: no dB chip in training {_pct(pooled['run'])}, the other dB chips in "
            f"training {_pct(each['pooled'])}, Otsu per chip {_pct(pooled['otsu_chip'])}.",
        ]
    return lines


def _prior_features_table(result: dict[str, Any] | None) -> list[str]:
    """`benchmarks/prior_features.py`: the flood prior's MLP alone on OMBRIA, one feature set per row."""
    if not result:
        return []
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in result["rows"]}))
    lines = [
        "",
        "### The prior's features",
        "",
        "The `flood` prior's MLP fitted alone, outside any network, on the flood chips a quality run "
        "trains on when the group is held out (OMBRIA train and FRANCE for OMBRIA test; OMBRIA train "
        "for FRANCE), with the recipe's sample and settings, and scored on every labelled pixel of the "
        f"held-out group. Mean over seeds {seeds} "
        f"(sample and MLP). Command: `{result['command']}`. F1 / precision / recall in %:",
        "",
        "| Held out | Features | What they add | Features per pixel | F1 / P / R at 0.5 "
        "| Best on own labels (at) |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in result["rows"]:
        groups.setdefault((r["held_out"], r["features"]), []).append(r)
    for (held, name), rows in groups.items():
        half = {k: sum(r["at_0.5"][k] for r in rows) / len(rows) for k in ("f1", "precision", "recall")}
        best = sum(r["oracle"]["f1"] for r in rows) / len(rows)
        at = "/".join(f"{r['oracle']['threshold']:.2f}" for r in rows)
        cells = [
            held,
            f"`{name}`",
            rows[0]["what"],
            str(rows[0]["n_features"]),
            " / ".join(_pct(half[k]) for k in ("f1", "precision", "recall")),
            f"{_pct(best)} ({at})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _water_prior_table(result: dict[str, Any] | None) -> list[str]:
    """`benchmarks/water_prior.py`: the `water` prior alone, one form per row, per held-out group."""
    if not result:
        return []
    lines = [
        "",
        "### The water prior's form",
        "",
        "The `water` output's prior fitted alone, outside any network, exactly as training fits it "
        "(`fit_pixel_prior`, the recipe's data and normalisation), on every other group or on the other "
        "ETCI event only, and scored on every labelled pixel of the held-out group. F1 / precision / "
        f"recall in % at 0.5, and the best F1 at one threshold on the group's own labels. Command: "
        f"`{result['command']}`.",
        "",
        "| Held out | Trained on | Water prior | F1 / P / R at 0.5 | Best on own labels (at) |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        half, best = r["at_0.5"], r["oracle"]
        cells = [
            r["held_out"],
            r["trained_on"],
            r["form"],
            " / ".join(_pct(half[k]) for k in ("f1", "precision", "recall")),
            f"{_pct(best['f1'])} ({best['threshold']:.2f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _logit_sources_table(result: dict[str, Any] | None) -> list[str]:
    """`benchmarks/logit_sources.py`: how much of a run's logits the token path, stem and prior move."""
    if not result:
        return []
    lines = [
        "",
        "### Where the logits come from",
        "",
        "Runs of the benchmark budget, each scored on the group it never saw: the spatial standard "
        "deviation of the output logit inside a chip (mean over chips), and of the change when one "
        "part is removed (the encoder's token path or the pixel stem replaced by zeros, the pixel prior "
        "left out), as a fraction of it. A token-path share near zero means the logits do not depend "
        f"on the encoder. Command: `{result['command']}`.",
        "",
        "| Run | Held out | Decoder | Strategy | Logit std | Token path | Pixel stem | Pixel prior |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        share = r["share"]
        cells = [
            r["label"],
            r.get("held_out", "–"),
            f"`{r['decoder']}`",
            r["strategy"],
            f"{r['logit_spatial_std']:.2f}",
            *(f"{share[k]:.2f}" for k in ("token_path", "pixel_stem", "pixel_prior")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def explorations_markdown(path: Path) -> list[str]:
    """The exploratory runs made while choosing the recipe (held-out group, what changed, F1)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    lines = [
        "",
        "### Runs made while choosing the recipe",
        "",
        data.get("note", "") + ". F1 in % at the run's own threshold (and at 0.5 where kept):",
        "",
        "| Run | Held out | What | Held-out F1 | OMBRIA test F1 | Wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        held = r.get("nebraska_at_run_threshold") if r["held_out"] == "etci-nebraska" else None
        held_txt = "–"
        if held is not None:
            held_txt = f"{_pct(held['f1'])} ({_pct(r['nebraska_at_0.5']['f1'])} at 0.5)"
        omb = r.get("ombria_test_at_run_threshold", {}).get("f1")
        omb_half = r.get("ombria_test_at_0.5", {}).get("f1")
        omb_txt = _pct(omb) + (f" ({_pct(omb_half)} at 0.5)" if omb_half is not None else "")
        cells = [f"`{r['name']}`", r["held_out"], r["what"], held_txt, omb_txt, f"{r['wall_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    transfer = data.get("etci_transfer", [])
    if transfer:
        lines += [
            "",
            "### One ETCI event to the other (`cpu-small`, its own budget)",
            "",
            "`cpu-small` trained on one ETCI event only (its train split, the recipe's own 8 x 30 batches), "
            "scored on every chip of the other, against global (per-event) Otsu on that event. "
            "F1 / precision / recall in %:",
            "",
            "| Recipe | Trained on | Scored on | Model at its threshold | Model at 0.5 "
            "| Otsu VH per event | Otsu VV | Otsu VV+VH |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in transfer:
            m, h = r["model_at_run_threshold"], r["model_at_0.5"]
            o = r["otsu_per_event"]
            cells = [
                r.get("recipe", "–"),
                r["trained_on"],
                r["scored_on"],
                f"{_pct(m['f1'])} / {_pct(m['precision'])} / {_pct(m['recall'])} (t {r['threshold']:.2f})",
                f"{_pct(h['f1'])}",
                *(f"{_pct(o[b]['f1'])}" for b in ("vh", "vv", "both")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _comparison_table(
        data.get("normalisation", []),
        "Per-scene normalisation (`data.normalization: per-scene`)",
        "The recipe with every scene standardised by robust statistics of its own pixels instead of "
        "per-source statistics (8-bit) and the encoder's dB preset (calibrated), same budget, one "
        "group held out.",
        "Per-scene",
        "Recipe (`auto`)",
    )
    lines += _comparison_table(
        data.get("label_mix", []),
        "Training only on sources whose labels mean the same",
        "The recipe, same budget, an ETCI event held out, trained on the other ETCI event and the "
        "dB chips only (labels: all water) instead of every other group (OMBRIA's labels are new "
        "water, seen with a pre-event view).",
        "Water-label sources only",
        "Recipe (every group)",
    )
    steps = data.get("label_kinds", [])
    if steps:
        lines += [
            "",
            "### Outputs per label kind, pixel prior, calibration: step by step",
            "",
            "The recipe with one group held out, same budget, one change at a time (the new recipe's "
            "other rows are in the main table above). "
            "F1 / precision / recall in % at the run's threshold:",
            "",
            "| Held out | Step | F1 / P / R | At 0.5 | Threshold |",
            "|---|---|---|---|---|",
        ]
        for r in steps:
            m = r["at_run_threshold"]
            cells = [
                r["held_out"],
                r["what"],
                " / ".join(_pct(m[k]) for k in ("f1", "precision", "recall")),
                _pct(r["at_0.5"]["f1"]),
                f"{r['threshold']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _comparison_table(
        data.get("feature_cache", []),
        "The frozen rows with the feature cache always on",
        "The frozen row of the main table as it ran before `train.feature_cache: auto`: every chip "
        "encoded once, whole, and training on crops and rotations of the cached token grids (a crop "
        "of a whole-chip encoding carries context from outside the crop, and a rotated token grid is "
        "not the encoding of the rotated chip); the main table's frozen row encodes each crop live.",
        "Cached F1 / P / R",
        "Live F1 / P / R (main table)",
    )
    lines += _comparison_table(
        data.get("after_label_kinds", []),
        "Tried on the recipe with outputs per label kind",
        "One change at a time on top of the recipe in the main table, same budget, one group held out.",
        "F1 / P / R",
        "Recipe F1 / P / R",
        change="Change",
    )
    lines += _comparison_table(
        data.get("prior_form", []),
        "The prior's form: a logistic term per pixel or an MLP over its context",
        "The recipe with the context prior (`model.prior_features: context`, item 11) in place of the "
        "per-pixel logistic prior it had before, same budget, the first column's group held out: first "
        "two sample sizes on OMBRIA test, then the context prior for both outputs on every group (the "
        "main table before `model.prior_context_kinds: [flood]`). The rightmost column is the recipe "
        "with the logistic prior as the main table measured it on 2026-12-02 at 18:11 UTC.",
        "Context prior F1 / P / R",
        "Logistic prior F1 / P / R",
        change="Prior fitted on",
    )
    lines += _comparison_table(
        data.get("prior_fit", []),
        "The prior fitted on whole chips",
        "The recipe with its pixel prior fitted on whole training chips, as evaluation reads them "
        "(`model.prior_fit: whole`), instead of on the augmented 128-px training crops: the context "
        "prior's tile quantiles and medians are statistics of whatever tile it is given, so a prior "
        "fitted on crops meets other statistics on whole chips. Same budget, the first column's group "
        "held out. Command: `python benchmarks/quality.py --groups G --rows recipe --set model.prior_fit=P "
        "[--set model.prior_trainable=false]` (each entry with its own in `quality-explorations.json`, "
        "key prior_fit). The rightmost column is the recipe with its prior fitted on crops, as the main "
        "table measured it on 2026-12-03 at 16:08 UTC, before `whole-context` became the recipe.",
        "F1 / P / R",
        "Recipe F1 / P / R (crops)",
        change="Prior",
    )
    lines += _prior_features_table(data.get("prior_features"))
    lines += _water_prior_table(data.get("water_prior"))
    archive = data.get("val_optimal_threshold")
    if archive:
        lines += seeds_markdown(
            archive["main"],
            archive["seeds"],
            title="Over seeds, at the val-optimal threshold (before item 14)",
            note=f"{archive['note']} The main table of that time: `{archive['main']['command']}` "
            f"({archive['main']['created']}).",
            source=f"benchmarks/results/{EXPLORATIONS}, key val_optimal_threshold",
        )
    lines += _db_scale_table(data.get("db_scale"))
    lines += _db_chips_table(data.get("db_chips"))
    lines += _logit_sources_table(data.get("logit_sources"))
    oracle = data.get("operating_point", [])
    if oracle:
        lines += [
            "",
            "### Ranking against operating point",
            "",
            "The recipe (same budget, the group held out) at its own threshold, and at the one "
            "threshold that would be best on the held-out group's labels (the `oracle` of each "
            "split report: a diagnostic, not a result). A large gap means the model ranks the "
            "event's pixels well but its operating point, learned on other events, does not fit; "
            "a small best F1 means it ranks them badly. F1 in %:",
            "",
            "| Held out | At the run's threshold | Threshold | Best on the group's own labels | At |",
            "|---|---|---|---|---|",
        ]
        for r in oracle:
            cells = [
                r["held_out"],
                _pct(r["at_run_threshold"]["f1"]),
                f"{r['threshold']:.2f}",
                _pct(r["oracle"]["f1"]),
                f"{r['oracle']['threshold']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Commands and raw numbers: `benchmarks/results/{path.name}`."]
    return lines


def readme_markdown(result: dict[str, Any]) -> str:
    """The README's short version: mean F1 / IoU over the held-out groups per row, and the targets."""
    summary = summarise(result)
    labels = {r.name: r.label for r in MODEL_ROWS}
    for r in result["rows"]:
        labels.setdefault(r["row"], r.get("label", r["row"]))
    means = summary["means"]
    order = sorted((n for n in means if means[n]["f1"] is not None), key=lambda n: -(means[n]["f1"] or 0))
    lines = [
        README_BEGIN,
        f"Leave one event group out over {len(result['groups'])} groups of real chips "
        f"({', '.join(g['label'] for g in result['groups'])}); mean over the held-out groups, in %, "
        f"from `{result['command']}` ({result['created']}; `docs/quality.md` has every group):",
        "",
        "| Method | Mean F1 | Mean IoU |",
        "|---|---|---|",
    ]
    lines += [f"| {labels.get(n, n)} | {_pct(means[n]['f1'])} | {_pct(means[n]['iou'])} |" for n in order]
    met = [k for k, v in summary["targets"].items() if v["met"]]
    missed = [k for k, v in summary["targets"].items() if not v["met"]]
    lines += [
        "",
        f"Targets met: {', '.join(met) or 'none'}; not met: {', '.join(missed) or 'none'}.",
        README_END,
    ]
    return "\n".join(lines)


def update_doc(path: Path, result: dict[str, Any]) -> None:
    from floodlora.io import replace_marked_section

    replace_marked_section(
        path, SECTION_BEGIN, SECTION_END, markdown(result), title="# Quality on real data\n"
    )


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=str(REAL), help="the real chips (default ../shared/data/real)")
    p.add_argument("--tiny", action="store_true", help="seconds: random micro encoder, a few chips per group")
    p.add_argument("--groups", default=None, help="comma-separated group names (default: all)")
    p.add_argument("--rows", default=None, help="comma-separated model rows (default: all)")
    p.add_argument("--set", action="append", default=[], help="extra budget override KEY=YAML (repeatable)")
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/quality.json)")
    p.add_argument("--markdown", default=None, help="doc to update (default docs/quality.md)")
    p.add_argument("--readme", default=None, help="README to update (default: README.md, unless --markdown)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--from-json", action="store_true", help="only regenerate the doc from the JSON")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score the runs kept in --workdir again (newer diagnostics), update the JSON and the doc",
    )
    p.add_argument(
        "--precision-check",
        default=None,
        metavar="GROUP",
        help="only train the recipe with GROUP held out in fp32 and bf16 and store the F1 difference "
        "(default JSON benchmarks/results/quality-precision.json)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2",
        help="only train the model rows again with these seeds (train.seed and data.seed), merged into "
        "the seeds JSON (default benchmarks/results/quality-seeds.json)",
    )
    p.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--budget", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    real = Path(args.real)
    tiny_ctx = None
    if args.tiny and not args.worker and not args.from_json:
        tiny_ctx = tempfile.TemporaryDirectory(prefix="quality-tiny-")
        real = mini_tree(real, Path(tiny_ctx.name) / "real")
    if args.worker:
        res = worker(real, args.worker[0], args.worker[1], json.loads(args.budget), Path(args.out_dir))
        print(json.dumps(res, default=float))
        return None
    json_path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "quality.json"
    doc = Path(args.markdown) if args.markdown else REPO / "docs" / "quality.md"
    readme = (
        Path(args.readme) if args.readme else (None if args.markdown or args.tiny else REPO / "README.md")
    )

    def write_docs(result: dict[str, Any]) -> None:
        update_doc(doc, result)
        if readme is not None:
            from floodlora.io import replace_marked_section

            replace_marked_section(readme, README_BEGIN, README_END, readme_markdown(result))

    if args.from_json:
        result = json.loads(json_path.read_text())
        write_docs(result)
        return result
    if args.rescore:
        if not args.workdir:
            raise SystemExit("--rescore needs --workdir (the folder that kept the runs)")
        from floodlora.io import atomic_write_json

        t0 = time.perf_counter()
        result = rescore(json.loads(json_path.read_text()), Path(args.workdir), real)
        result["rescored"] = {
            "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": command_line("quality.py", sys.argv[1:] if argv is None else argv),
            "wall_seconds": time.perf_counter() - t0,
        }
        atomic_write_json(json_path, result)
        write_docs(result)
        return result
    if not Path(args.real).is_dir():
        raise SystemExit(f"{args.real}: real data folder not found (pass --real)")

    budget = parse_overrides(args.set, TINY_BUDGET if args.tiny else BUDGET)
    if args.precision_check:
        return run_precision_check(args, argv, real, budget, tiny_ctx)
    if args.seeds:
        return run_seeds(args, argv, real, budget, tiny_ctx)
    groups = select_groups(args.groups)
    rows = select_rows(args.rows)
    t0 = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="quality-") if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)  # type: ignore[union-attr]
    results: list[dict[str, Any]] = []
    try:
        for group in groups:
            for b in baseline_rows(real, group, limit=6 if args.tiny else None):
                results.append(b)
                print(f"{group.name:15s} {b['row']:14s} F1 {_pct(b['at_run_threshold']['f1'])}", flush=True)
            for row in rows:
                r = _run_worker(real, group, row, budget, work)
                r["label"] = row.label
                results.append(r)
                msg = r.get("error") or f"F1 {_pct(r['at_run_threshold']['f1'])} ({r['wall_seconds']:.0f} s)"
                print(f"{group.name:15s} {row.name:14s} {msg}", flush=True)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
        if tiny_ctx is not None:
            tiny_ctx.cleanup()
    from floodlora.config import load_config

    recipe = load_config(RECIPE, budget)
    t = recipe.train
    budget_text = (
        f"`--config {RECIPE}`"
        + (f" with {', '.join(f'{k}={v}' for k, v in budget.items())}" if budget else "")
        + f": at most {t.max_epochs} epochs x {t.limit_train_batches} batches of {recipe.data.batch_size} "
        f"crops of {recipe.data.crop_size} px, lr {t.lr:g}, "
        f"early stopping patience {t.early_stopping_patience}, encoder `{recipe.model.checkpoint}`, "
        f"views {'+'.join(recipe.data.views)}, bands {'+'.join(recipe.data.bands)}"
    )
    result = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command_line("quality.py", argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "tiny": args.tiny,
        "budget": budget,
        "budget_text": budget_text,
        "groups": [{"name": g.name, "label": g.label, "events": list(g.events)} for g in groups],
        "rows": results,
        "wall_seconds": time.perf_counter() - t0,
        "json": str(json_path.relative_to(REPO))
        if json_path.resolve().is_relative_to(REPO)
        else str(json_path),
    }
    result["summary"] = summarise(result)
    from floodlora.io import atomic_write_json

    atomic_write_json(json_path, result)
    write_docs(result)
    return result


def run_precision_check(
    args: argparse.Namespace, argv: list[str] | None, real: Path, budget: dict[str, Any], tiny_ctx: Any
) -> dict[str, Any]:
    """`--precision-check GROUP`: write its JSON (docs/performance.md's precision section reads it)."""
    from floodlora.io import atomic_write_json

    group = next((g for g in GROUPS if g.name == args.precision_check), None)
    if group is None:
        raise SystemExit(f"--precision-check: unknown group; choose from {', '.join(g.name for g in GROUPS)}")
    json_path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "quality-precision.json"
    t0 = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="quality-precision-") if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)  # type: ignore[union-attr]
    try:
        check = precision_check(real, group, budget, work, tiny=args.tiny)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
        if tiny_ctx is not None:
            tiny_ctx.cleanup()
    result = {
        "benchmark": "quality-precision",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command_line("quality.py", argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "tiny": args.tiny,
        "recipe": RECIPE,
        "budget": budget,
        **check,
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(json_path, result)
    return result


def parse_seeds(text: str) -> list[int]:
    """ "1,2" -> [1, 2]; anything else is a one-line error."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers, e.g. 1,2")
    return seeds


def run_seeds(
    args: argparse.Namespace, argv: list[str] | None, real: Path, budget: dict[str, Any], tiny_ctx: Any
) -> dict[str, Any]:
    """`--seeds S1,S2`: train the chosen model rows with each seed, merge them into the seeds JSON.

    An entry replaces an earlier one of the same group, row and seed; the others are kept, so the
    file can be filled a few groups at a time (each entry records its own command and date). The
    file is written after every run, so a call that stops early keeps what it measured.
    """
    from floodlora.io import atomic_write_json

    seeds = parse_seeds(args.seeds)
    groups = select_groups(args.groups)
    rows = select_rows(args.rows)
    if not groups or not rows:
        raise SystemExit("--seeds: no group or model row selected (see --groups and --rows)")
    json_path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / SEEDS
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if old and (old.get("budget") != budget or old.get("tiny") != args.tiny):
        raise SystemExit(
            f"{json_path}: holds runs of another budget ({old.get('budget')}); pass another --json"
        )
    tolerance = run_config(real, groups[0], rows[0], budget).train.threshold_tolerance
    if {r["threshold_tolerance"] for r in old.get("rows", []) if "threshold_tolerance" in r} - {tolerance}:
        raise SystemExit(
            f"{json_path}: holds runs with another train.threshold_tolerance than {tolerance}; "
            "pass another --json"
        )
    command = command_line("quality.py", argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="quality-seeds-") if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)  # type: ignore[union-attr]
    new: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:  # after every run: a long call that stops keeps what it measured
        replaced = {(r["group"], r["row"], r["seed"]) for r in new}
        kept = [r for r in old.get("rows", []) if (r["group"], r["row"], r["seed"]) not in replaced]
        result = {
            "benchmark": "quality-seeds",
            "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "tiny": args.tiny,
            "budget": budget,
            "rows": sorted(kept + new, key=lambda r: (r["group"], r["row"], r["seed"])),
            "wall_seconds": old.get("wall_seconds", 0.0) + time.perf_counter() - t0,
        }
        atomic_write_json(json_path, result)
        return result

    try:
        for seed in seeds:
            for group in groups:
                for row in rows:
                    seeded = {**budget, "train.seed": seed, "data.seed": seed}
                    r = _run_worker(real, group, row, seeded, work / f"seed-{seed}")
                    r.update(seed=seed, label=row.label, command=command)
                    r["created"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                    new.append(r)
                    save()
                    f1 = r.get("error") or f"F1 {_pct(r['at_run_threshold']['f1'])}"
                    msg = f1 if "error" in r else f"{f1} ({r['wall_seconds']:.0f} s)"
                    print(f"seed {seed} {group.name:15s} {row.name:10s} {msg}", flush=True)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
        if tiny_ctx is not None:
            tiny_ctx.cleanup()
    return save()


def seeds_markdown(
    main: dict[str, Any],
    seeds: dict[str, Any] | None,
    title: str = "Over seeds",
    note: str | None = None,
    source: str = f"benchmarks/results/{SEEDS}",
) -> list[str]:
    """The table "Over seeds": each (group, model row) with other seeds, beside the main table's run.

    The main table's run is seed 0 (the config default); it joins the mean only where the seeds
    JSON was measured with the main table's budget. `title` and `note` render an archived pair
    (a main table's rows and its seeds file) the same way.
    """
    if not seeds or not seeds.get("rows"):
        return []
    same_budget = seeds.get("budget") == main.get("budget") and seeds.get("tiny") == main.get("tiny")
    by_main = {(r["row"], r["group"]): r for r in main["rows"] if "error" not in r}
    labels = {g["name"]: g["label"] for g in main["groups"]}
    per: dict[tuple[str, str], dict[int, float]] = {}
    oracle: dict[tuple[str, str], list[float]] = {}
    pr: dict[tuple[str, str], list[tuple[float, float]]] = {}
    val_optimal: dict[tuple[str, str], list[float]] = {}  # the same runs at the val-optimal threshold
    for r in seeds["rows"]:
        if "error" not in r:
            per.setdefault((r["group"], r["row"]), {})[r["seed"]] = r["at_run_threshold"]["f1"]
            if "precision" in r["at_run_threshold"]:
                s = r["at_run_threshold"]
                pr.setdefault((r["group"], r["row"]), []).append((s["precision"], s["recall"]))
            if r.get("oracle"):
                oracle.setdefault((r["group"], r["row"]), []).append(r["oracle"]["f1"])
            rules = held_out_by_rule(r)
            if rules:
                val_optimal.setdefault((r["group"], r["row"]), []).append(rules["val-optimal"])
    if same_budget:
        for (group, row), f1s in per.items():
            main_run = by_main.get((row, group))
            if main_run is not None and 0 not in f1s:
                f1s[0] = main_run["at_run_threshold"]["f1"]
                s = main_run["at_run_threshold"]
                if "precision" in s:
                    pr.setdefault((group, row), []).append((s["precision"], s["recall"]))
                if main_run.get("oracle"):
                    oracle.setdefault((group, row), []).append(main_run["oracle"]["f1"])
                rules = held_out_by_rule(main_run)
                if rules:
                    val_optimal.setdefault((group, row), []).append(rules["val-optimal"])
    all_seeds = sorted({s for f1s in per.values() for s in f1s})
    lines = [
        "",
        f"### {title}",
        "",
        *([note, ""] if note else []),
        "Model rows trained again with other seeds (`train.seed` and `data.seed`: initialisation, draws, "
        "train/val split), same budget"
        + (" as the main table, whose run is seed 0" if same_budget else " as recorded in the JSON")
        + ". F1 in % on the held-out group at each run's own threshold. Command: "
        "`python benchmarks/quality.py --seeds S1,S2 --groups G --rows R` "
        f"(`{source}`, each entry with its own command). Then the mean precision "
        "and recall, and the mean of each run's best F1 at one threshold on the group's own labels "
        "(a diagnostic of its ranking, not a result)"
        + (
            "; where the runs kept their F1 curves, the same runs' mean F1 at the val-optimal threshold "
            '(table "The run\'s threshold"):'
            if val_optimal
            else ":"
        ),
        "",
        "| Held out | Method | "
        + " | ".join(f"Seed {s}" for s in all_seeds)
        + " | Mean | Range | Mean P / R | Best on own labels |"
        + (" Mean at val-optimal |" if val_optimal else ""),
        "|---" * (len(all_seeds) + 6 + bool(val_optimal)) + "|",
    ]
    row_labels = {m.name: m.label.split(" (")[0] for m in MODEL_ROWS}
    group_order = [g.name for g in GROUPS]
    row_order = [m.name for m in MODEL_ROWS]
    fitted_lines = []
    for group, row in sorted(per, key=lambda k: (group_order.index(k[0]), row_order.index(k[1]))):
        f1s = per[(group, row)]
        values = list(f1s.values())
        mean = sum(values) / len(values)
        cells = [_pct(f1s[s]) if s in f1s else "–" for s in all_seeds]
        spread = f"{_pct(min(values))}–{_pct(max(values))}"
        ranked = oracle.get((group, row))
        best = _pct(sum(ranked) / len(ranked)) if ranked else "–"
        rates = pr.get((group, row))
        p_r = (
            f"{_pct(sum(p for p, _ in rates) / len(rates))} / {_pct(sum(r for _, r in rates) / len(rates))}"
            if rates
            else "–"
        )
        at_optimal = val_optimal.get((group, row))
        optimal_cell = _pct(sum(at_optimal) / len(at_optimal)) if at_optimal else "–"
        lines.append(
            f"| {labels.get(group, group)} | {row_labels.get(row, row)} | "
            + " | ".join(cells)
            + f" | {_pct(mean)} | {spread} | {p_r} | {best} |"
            + (f" {optimal_cell} |" if val_optimal else "")
        )
        fit = by_main.get(("fitted", group))
        if row == "recipe" and fit is not None and group.startswith("etci-") and len(values) > 1:
            f = fit["at_run_threshold"]["f1"]
            fitted_lines.append(
                f"* {group}: the recipe's mean over {len(values)} seeds {_pct(mean)} against the fitted "
                f"threshold's {_pct(f)}: **{'met' if mean >= f else 'not met'}** on the mean, "
                f"met by {sum(v >= f for v in values)} of {len(values)} runs."
            )
    return lines + (["", *fitted_lines] if fitted_lines else [])


if __name__ == "__main__":
    main()
