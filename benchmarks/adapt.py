"""Few-label adaptation to a new flood, leave one event group out: `floodlora adapt` against its baselines.

    python benchmarks/adapt.py                              # every group, documented budgets
    python benchmarks/adapt.py --groups etci-northal --start-set train.max_epochs=3
    python benchmarks/adapt.py --tiny                       # seconds: the test suite's mode
    python benchmarks/adapt.py --from-json                  # regenerate the doc section and PNG only
    python benchmarks/adapt.py --redo-methods adapt-start,adapt-start-held,adapt-encoder,adapt-encoder-held \
        --workdir KEPT                                      # measure the fine-tuning rows again, same chips
    python benchmarks/adapt.py --add-methods adapt-start-all --rebuild --workdir NEW
                                                            # a new machine: retrain the seeded starting runs,
                                                            # cut the chips again, check them, then add rows

For each held-out event group (the groups of ``benchmarks/quality.py``):

* **zero-shot**: a starting model (``--config generalist`` with the group held out, at the budget
  ``START_BUDGET`` or ``--start-set`` overrides) scores the group at its own threshold;
* **k labelled chips** (k = 5, 10, 20) of the group, drawn with a seed among the group's chips that
  hold flood (nested: the 5 are among the 10, the 10 among the 20), are given to `adapt` (a) from that
  starting model and (b) from the bare ``embedded`` encoder;
* **fitted threshold**: the VV+VH threshold maximising F1 on the same k chips;
* **uncertainty-chosen chips**: at one k (``--uncertain-k``), the k chips that the starting model is
  least sure of (mean flip-TTA spread of its probabilities) among a seeded reserve of
  ``UNCERTAIN_POOL`` x k other chips with flood, adapted from the starting model, against the random k.

Every method is scored on the same chips: the group's chips neither drawn for k nor reserved (at most
``--max-eval`` of them, evenly spaced), with at most half nodata. They depend on the group and the
seed alone, so runs with different starting models are scored on the same chips. Results go to
``benchmarks/results/adapt.json`` (written after every group, so a run cut short keeps what
finished), a PNG of F1 against k, and the section of ``docs/quality.md`` between the markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _common import command_line, parse_overrides, portable_path, rel
from quality import (
    BUDGET,
    GROUPS,
    REAL,
    REPO,
    TINY_BUDGET,
    Group,
    _chip_key,
    _pct,
    _score,
    machine,
    mini_tree,
    select_groups,
)

SECTION_BEGIN = "<!-- benchmarks/adapt.py: begin -->"
SECTION_END = "<!-- benchmarks/adapt.py: end -->"
#: `--as-check`: a second draw of chips, one compact table at one k (docs/quality.md, seed 1)
CHECK_BEGIN = "<!-- benchmarks/adapt.py check: begin -->"
CHECK_END = "<!-- benchmarks/adapt.py check: end -->"
START_CONFIG = "generalist"
ENCODER = "embedded"
KS: tuple[int, ...] = (5, 10, 20)
UNCERTAIN_K = 10
#: The uncertainty-chosen chips are the k most uncertain of this many times k reserved chips with flood.
UNCERTAIN_POOL = 2
#: The starting model's documented budget: the quality benchmark's (4 epochs x 20 batches), so that a
#: group's starting model trains in about 4 minutes; the full generalist (12 x 150) takes ~45 min.
START_BUDGET: dict[str, Any] = dict(BUDGET)
TINY_START: dict[str, Any] = dict(TINY_BUDGET)
#: `adapt`'s own defaults (AdaptOptions) unless overridden with --adapt-set.
ADAPT_BUDGET: dict[str, Any] = {}
TINY_ADAPT: dict[str, Any] = {
    "steps_per_epoch": 1,
    "batch_size": 2,
    "crop_size": 32,
    "max_epochs": 1,
    "patience": 1,
    "min_holdout_chips": 8,
}
TINY_KS: tuple[int, ...] = (1, 2)
METHODS = {
    "calibrate-start": "operating point set on the k chips, moved only as far as they demand, nothing "
    "trained (`adapt`'s default for a run)",
    "calibrate-best": "operating point at the best F1 on the k chips, nothing trained "
    "(`adapt --calibrate-tolerance 0`)",
    "adapt-start": "fine-tune the starting model, a quarter of the chips held back, then its operating "
    "point set on the k chips, moved only as far as they demand "
    "(`adapt --method fine-tune --hold-back --calibrate-tolerance 0.01`)",
    "adapt-start-held": "fine-tune the starting model, threshold from the held-back chips "
    "(`adapt --method fine-tune --hold-back --no-calibrate-after`)",
    "adapt-start-all": "fine-tune the starting model on every chip, then its operating point at the best "
    "F1 on them (`adapt --method fine-tune`)",
    "adapt-encoder": f"fine-tune the bare `{ENCODER}` encoder, a quarter of the chips held back, then its "
    "operating point set on the k chips, moved only as far as they demand "
    "(`adapt --hold-back --calibrate-tolerance 0.01`)",
    "adapt-encoder-held": f"fine-tune the bare `{ENCODER}` encoder, threshold from the held-back chips "
    "(`adapt --hold-back --no-calibrate-after`)",
    "adapt-encoder-all": f"fine-tune the bare `{ENCODER}` encoder on every chip, then its operating point at "
    "the best F1 on them (`adapt`'s default for an encoder)",
    "fitted": "threshold fitted on the k chips",
}
#: The plot's legend: the tables carry each method's full words and command.
PLOT_LABELS = {
    "calibrate-start": "calibrate the start (adapt's default for a run)",
    "calibrate-best": "calibrate the start to the best F1 on the k chips",
    "adapt-start": "fine-tune the start, a quarter held back (--hold-back)",
    "adapt-start-all": "fine-tune the start on every chip (--method fine-tune)",
    "adapt-encoder": "fine-tune the bare encoder, a quarter held back (--hold-back)",
    "adapt-encoder-all": "fine-tune the bare encoder on every chip (adapt's default for it)",
    "fitted": "threshold fitted on the k chips",
}
#: Each method's options spelled out, so that a row keeps its meaning when `adapt`'s defaults change.
_HELD: dict[str, Any] = {"method": "fine-tune", "hold_back": True}
_ALL_CHIPS: dict[str, Any] = {"method": "fine-tune", "hold_back": False, "calibrate_tolerance": 0.0}
#: AdaptOptions each method sets on top of the benchmark's adaptation budget.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "calibrate-start": {"method": "calibrate", "calibrate_tolerance": 0.01},
    "calibrate-best": {"method": "calibrate", "calibrate_tolerance": 0.0},
    "adapt-start": {**_HELD, "calibrate_tolerance": 0.01},
    "adapt-start-held": {**_HELD, "calibrate_after": False},
    "adapt-start-all": _ALL_CHIPS,
    "adapt-encoder": {**_HELD, "calibrate_tolerance": 0.01},
    "adapt-encoder-held": {**_HELD, "calibrate_after": False},
    "adapt-encoder-all": _ALL_CHIPS,
}
MAX_ADAPT_SECONDS = 300.0  # the target: each adaptation in 5 minutes or less on 2 cores


# --------------------------------------------------------------------------------------------------
# chips
# --------------------------------------------------------------------------------------------------


def group_refs(real: Path, group: Group) -> list[Any]:
    """The group's labelled chips, assigned exactly as the quality benchmark holds them out."""
    from floodlora.config import DataConfig
    from floodlora.data.datamodule import assign_splits
    from floodlora.data.sources import discover

    cfg = DataConfig(
        roots=[str(real)], test_fraction=0.0, holdout_events=[] if group.native_test else list(group.events)
    )
    splits = assign_splits(discover([real]), cfg)
    refs = splits["test" if group.native_test else "ood"]
    return sorted((r for r in refs if r.labelled and r.format in group.formats), key=lambda r: r.key)


def chip_facts(refs: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Per chip key: flood fraction of its labelled pixels and nodata fraction."""
    from floodlora.data.sources import read_sample

    facts = {}
    for ref in refs:
        s = read_sample(ref)
        labelled = s.mask != 255
        flood = float((s.mask == 1).sum() / max(1, labelled.sum()))
        facts[ref.key] = {"flood": flood, "nodata": float(s.nodata_fraction())}
    return facts


def subset_tree(root: Path, refs: Sequence[Any], dest: Path) -> Path:
    """A symlinked tree under `dest` holding only `refs`' chips, in `root`'s layout (readers pair a
    chip's files across sibling folders by a shared key, so every sibling's file of that key is kept)."""
    root = Path(root)
    for ref in refs:
        for p in map(Path, ref.files.values()):
            folder = p.parent
            files = [f for f in folder.iterdir() if f.is_file()]
            if len(files) <= 4:  # one chip per folder (C2S, Sen1Floods11): link the folder
                chosen = [(f, folder) for f in files]
            else:
                key = _chip_key(p.name)
                chosen = [
                    (f, sib)
                    for sib in folder.parent.iterdir()
                    if sib.is_dir()
                    for f in sib.iterdir()
                    if f.is_file() and _chip_key(f.name) == key
                ]
            for f, _ in chosen:
                target = dest / os.path.relpath(f, root)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(f.resolve())
    return dest


def random_choice(candidates: Sequence[Any], k: int, seed: int) -> list[Any]:
    """The first `k` of a seeded permutation (so smaller k are nested in larger ones)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(candidates))
    return [candidates[i] for i in order[:k]]


def chip_uncertainty(run_dir: Path, refs: Sequence[Any], batch_size: int = 8) -> dict[str, float]:
    """Per chip key: mean flip-TTA spread (std of the 4 flips' probabilities) over valid pixels."""
    import torch
    from torch.utils.data import DataLoader

    from floodlora.data.datamodule import FloodDataset, collate
    from floodlora.inference.predict import predict_probabilities
    from floodlora.runs import load_run

    loaded = load_run(run_dir)
    model = loaded.model.eval()
    d = loaded.config.data
    ds = FloodDataset(refs, loaded.presets, d.views, d.bands, crop_size=None, seed=d.seed)
    out: dict[str, float] = {}
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate):
            _, spread = predict_probabilities(
                model, batch["views"], time=batch["time"], latlon=batch["latlon"], tta=True
            )
            assert spread is not None
            for i, key in enumerate(batch["chip_key"]):
                valid = batch["valid"][i]
                s = spread[i, 0][valid]
                out[key] = float(s.mean()) if s.numel() else 0.0
    return out


# --------------------------------------------------------------------------------------------------
# one group
# --------------------------------------------------------------------------------------------------


def train_start(real: Path, group: Group, budget: dict[str, Any], out: Path) -> dict[str, Any]:
    """The starting model: the generalist recipe with the group held out."""
    from floodlora.config import load_config
    from floodlora.training.engine import train_run

    overrides: dict[str, Any] = {
        "data.roots": [str(real)],
        "data.test_fraction": 0.0,
        "data.holdout_events": [] if group.native_test else list(group.events),
        **budget,
    }
    cfg = load_config(START_CONFIG, overrides)
    t0 = time.perf_counter()
    result = train_run(cfg, out)
    acc = result.accounting
    return {
        "run_dir": portable_path(str(out)),  # where it lay: the workdir is scratch of one machine
        "wall_seconds": time.perf_counter() - t0,
        "threshold": result.metrics["best_threshold"],
        "epochs": acc.get("epochs"),
        "train_chips": acc["data"]["splits"]["train"],
    }


def score_run(run_dir: Path, eval_root: Path) -> dict[str, Any]:
    from floodlora.training.engine import evaluate_run

    rep = evaluate_run(run_dir, roots=[str(eval_root)], split="all")
    return _score(rep) | {"threshold": rep["threshold"]}


def run_adapt(
    from_: str | Path, data: Path, out: Path, options: dict[str, Any], eval_root: Path
) -> dict[str, Any]:
    """One adaptation, timed (the `adapt` call: setup, fitting, saving), then scored."""
    from floodlora.training.adapt import AdaptOptions, adapt

    t0 = time.perf_counter()
    res = adapt(from_, data, out, options=AdaptOptions(**options))
    wall = time.perf_counter() - t0
    s = res.summary
    return {
        "score": score_run(out, eval_root),
        "wall_seconds": wall,
        "epochs": s["epochs"],
        "early_stopped": s["early_stopped"],
        "held_back": len(s["chips"]["held_back"]),
        "threshold": s["threshold"],
    }


def fitted_row(chosen: Sequence[Any], eval_refs: Sequence[Any]) -> dict[str, Any]:
    from floodlora.analysis.baselines import run_baseline

    t0 = time.perf_counter()
    rep = run_baseline("otsu", list(eval_refs), "both", "fitted", train=list(chosen), per_chip=False)
    return {
        "score": _score(rep) | {"threshold": rep["baseline"]["threshold_value"]},
        "wall_seconds": time.perf_counter() - t0,
    }


def run_group(
    real: Path,
    group: Group,
    ks: Sequence[int],
    uncertain_k: int | None,
    start_budget: dict[str, Any],
    adapt_options: dict[str, Any],
    encoder: str,
    seed: int,
    max_eval: int | None,
    work: Path,
    start_from: Path | None = None,
    log: Any = print,
    on_row: Any = lambda group: None,
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Zero-shot, k-chip adaptations (from the starting model and from the encoder), fitted threshold.

    `methods`: only these adaptations (default all); the chip folders, zero-shot and fitted rows
    are made whatever they are."""
    from floodlora.analysis.baselines import subsample

    t_group = time.perf_counter()
    refs = group_refs(real, group)
    facts = chip_facts(refs)
    usable = [r for r in refs if facts[r.key]["nodata"] <= 0.5]
    flooded = [r for r in usable if facts[r.key]["flood"] > 0]
    kmax = max(ks)
    if len(flooded) < kmax + (uncertain_k or 0):
        raise SystemExit(
            f"{group.name}: {len(flooded)} chips with flood, fewer than k = {kmax} (+ {uncertain_k or 0})"
        )
    if start_from is not None:
        start = {"run_dir": str(start_from), "reused": True}
    else:
        start = train_start(real, group, start_budget, work / group.name / "start")
    start_dir = Path(start_from) if start_from is not None else work / group.name / "start"
    log(f"{group.name}: starting model ready ({start.get('wall_seconds', 0):.0f} s)")
    randoms = random_choice(flooded, kmax, seed)
    random_keys = {r.key for r in randoms}
    # The uncertainty candidates are a seeded reserve drawn before any model exists, so the scored
    # chips depend on the group and the seed alone, never on what a starting model finds uncertain.
    rest = [r for r in flooded if r.key not in random_keys]
    pool = random_choice(rest, UNCERTAIN_POOL * (uncertain_k or 0), seed + 1)  # at most all of `rest`
    pool_keys = {r.key for r in pool}
    eval_refs = subsample([r for r in usable if r.key not in random_keys | pool_keys], max_eval)
    uncertain: list[Any] = []
    unc_seconds = 0.0
    if uncertain_k:
        t0 = time.perf_counter()
        unc = chip_uncertainty(start_dir, pool)
        unc_seconds = time.perf_counter() - t0
        uncertain = sorted(pool, key=lambda r: -unc[r.key])[:uncertain_k]
    eval_root = subset_tree(real, eval_refs, work / group.name / "eval")
    zero = score_run(start_dir, eval_root)
    log(f"{group.name}: zero-shot F1 {_pct(zero['f1'])} on {zero['n_chips']} chips")
    rows: list[dict[str, Any]] = []

    def entry() -> dict[str, Any]:
        return {
            "name": group.name,
            "label": group.label,
            "n_chips": len(refs),
            "n_usable": len(usable),
            "n_flooded": len(flooded),
            "n_eval": len(eval_refs),
            "start": start,
            "uncertainty_pool": [r.chip_id for r in pool],
            "uncertainty_seconds": unc_seconds,
            "zero_shot": zero,
            "rows": rows,
            "complete": False,
            "wall_seconds": time.perf_counter() - t_group,
        }

    selections = [("random", k, randoms[:k]) for k in ks]
    if uncertain_k:
        selections.append(("uncertain", uncertain_k, uncertain))
    for selection, k, chips in selections:
        data = subset_tree(real, chips, work / group.name / f"{selection}-{k}" / "chips")
        base = {"k": k, "selection": selection, "chips": [r.chip_id for r in chips]}
        rows.append({**base, "method": "fitted", **fitted_row(chips, eval_refs)})
        froms: list[tuple[str, str | Path]] = [(m, start_dir) for m in FROM_START]
        if selection == "random":
            froms += [(m, encoder) for m in FROM_ENCODER]
        froms = [(m, f) for m, f in froms if methods is None or m in methods]
        for method, from_ in froms:
            out = work / group.name / f"{selection}-{k}" / method
            try:
                r = run_adapt(from_, data, out, _options(adapt_options, method), eval_root)
            except Exception as exc:  # one failed adaptation must not lose the others
                r = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            rows.append({**base, "method": method, **r})
            msg = r.get("error") or f"F1 {_pct(r['score']['f1'])} ({r['wall_seconds']:.0f} s)"
            log(f"{group.name}: k={k:2d} {selection:9s} {method:13s} {msg}")
            on_row(entry())
    return {**entry(), "complete": True}


def _options(adapt_options: dict[str, Any], method: str) -> dict[str, Any]:
    return {**adapt_options, **METHOD_OPTIONS.get(method, {})}


#: Methods that start from the group's starting run, and from the bare encoder (random chips only):
#: every method `--add-methods` can add later.
FROM_START = ("calibrate-start", "calibrate-best", "adapt-start", "adapt-start-held", "adapt-start-all")
FROM_ENCODER = ("adapt-encoder", "adapt-encoder-held", "adapt-encoder-all")
#: The methods that train (their rows depend on the adaptation budget).
TRAINING_METHODS = tuple(
    m for m in (*FROM_START, *FROM_ENCODER) if METHOD_OPTIONS[m]["method"] == "fine-tune"
)


def add_rows(
    result: dict[str, Any],
    methods: Sequence[str],
    adapt_options: dict[str, Any],
    work: Path,
    log: Any = print,
) -> None:
    """Methods a finished result lacks, on the same chips: its starting runs, k-chip folders and
    scoring folder, kept under `work` (the first run's --workdir). Each new row follows the group's
    fitted-threshold row of the same k and selection."""
    encoder = result.get("encoder", ENCODER)
    for g in result["groups"]:
        kept = work / g["name"] / "start"  # where a first run (or --rebuild) keeps it
        start_dir = kept if kept.is_dir() else Path(g["start"]["run_dir"])
        eval_root = work / g["name"] / "eval"
        for fit in [r for r in g["rows"] if r["method"] == "fitted"]:
            k, selection = fit["k"], fit["selection"]
            data = work / g["name"] / f"{selection}-{k}" / "chips"
            for method in methods:
                if _row(g, method, k, selection) is not None:
                    continue
                if method in FROM_ENCODER and selection != "random":
                    continue  # the bare encoder is adapted on random chips only, as in a first run
                from_ = encoder if method in FROM_ENCODER else start_dir
                if not data.is_dir() or not eval_root.is_dir():
                    raise SystemExit(f"{data}: the first run's chips are gone; pass its --workdir")
                out = work / g["name"] / f"{selection}-{k}" / method
                shutil.rmtree(out, ignore_errors=True)  # a row the result lacks: an earlier try's run
                r = run_adapt(from_, data, out, _options(adapt_options, method), eval_root)
                row = {"k": k, "selection": selection, "chips": fit.get("chips"), "method": method, **r}
                g["rows"].insert(g["rows"].index(fit) + 1, row)
                log(f"{g['name']}: k={k:2d} {selection:9s} {method:15s} F1 {_pct(r['score']['f1'])}")


# --------------------------------------------------------------------------------------------------
# summary, markdown, PNG
# --------------------------------------------------------------------------------------------------


def _row(group: dict[str, Any], method: str, k: int, selection: str = "random") -> dict[str, Any] | None:
    for r in group["rows"]:
        if r["method"] == method and r["k"] == k and r["selection"] == selection and "error" not in r:
            return r
    return None


#: The methods judged against the issue's targets (every adapting method), in the order the doc lists them.
TARGET_METHODS = (*FROM_START, *FROM_ENCODER)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, per group, from the JSON alone."""
    k = 10 if 10 in result["ks"] else result["ks"][len(result["ks"]) // 2]
    targets: dict[str, Any] = {"k": k, "groups": {}}
    walls = [
        r["wall_seconds"] for g in result["groups"] for r in g["rows"] if r["method"].startswith("adapt")
    ]
    walls = [w for w in walls if w is not None]
    targets["max_adapt_seconds"] = max(walls) if walls else None
    targets["adapt_within_5_min"] = bool(walls) and max(walls) <= MAX_ADAPT_SECONDS
    for g in result["groups"]:
        fit = _row(g, "fitted", k)
        zero = g["zero_shot"]["f1"]
        entry: dict[str, Any] = {"zero_shot": zero}
        if fit:
            entry["fitted"] = fit["score"]["f1"]
        for name in TARGET_METHODS:
            r = _row(g, name, k)
            if r and fit:
                f1 = r["score"]["f1"]
                entry[name] = f1
                entry[f"{name}_met"] = f1 >= fit["score"]["f1"] + 0.05 and f1 >= zero
        targets["groups"][g["name"]] = entry
    return targets


def _label(method: str, result: dict[str, Any]) -> str:
    """The method's label, naming the encoder the run actually adapted."""
    return METHODS[method].replace(f"`{ENCODER}`", f"`{result.get('encoder', ENCODER)}`")


def markdown(result: dict[str, Any]) -> str:
    t = result["summary"]
    m = result["machine"]
    run_names = {g["name"] for g in result["groups"]}
    tiny = " — tiny mode, not a measurement" if result["tiny"] else ""
    cap = "" if result["max_eval"] is None else f", at most {result['max_eval']} evenly spaced"
    not_run = [g.label + f" (`{g.name}`)" for g in GROUPS if g.default and g.name not in run_names]
    words = result["command"].split()
    asked = words[words.index("--groups") + 1].split(",") if "--groups" in words[:-1] else []
    stopped = [f"`{n}`" for n in asked if n not in run_names]
    lines = [
        SECTION_BEGIN,
        "",
        "## Few-label adaptation to a new flood (`floodlora adapt`)",
        "",
        f"Command: `{result['command']}` ({result['created']}, {m['cpus']} CPUs, torch {m['torch']}, "
        f"{result['wall_seconds'] / 60:.0f} min in all){tiny}."
        + "".join(
            f" Rows of {', '.join(f'`{m}`' for m in a['methods'])} "
            f"{'measured again' if a.get('redone') else 'added'} on the same chips and starting runs "
            f"by `{a['command']}` ({a['wall_seconds'] / 60:.0f} min)."
            for a in result.get("added", [])
        )
        + "".join(f" {note}" for note in result.get("notes", [])),
        "",
        "Held-out groups run: "
        + ", ".join(f"{g['label']} (`{g['name']}`)" for g in result["groups"])
        + ". "
        + ("Not run: " + ", ".join(not_run) + "." if not_run else "Every group was run.")
        + (f" Asked for but stopped before they finished: {', '.join(stopped)}." if stopped else ""),
        "",
        f"Starting model (zero-shot row): {result['start_text']}. Adaptation budget: {result['adapt_text']}. "
        f"k chips drawn with seed {result['seed']} among the group's chips with flood (nested across k); "
        f"every method of a group is scored on the same chips: the group's chips neither drawn for k nor "
        f"reserved as uncertainty candidates ({UNCERTAIN_POOL} x k chips with flood, drawn with seed "
        f"{result['seed'] + 1}), with at most half nodata{cap}, so they depend on the seed alone. "
        "Calibrated runs score at the threshold their rule picks on all k chips, moved to 0.5; "
        "fine-tuned runs at the threshold fine-tuning chose (0.5 with nothing held back, else the "
        "held-back chips' own), then, unless marked `--no-calibrate-after`, moved on all k chips: as "
        "far as they demand where marked `--calibrate-tolerance 0.01`, else to their best F1.",
        "",
        "![F1 against k](" + os.path.relpath(REPO / result["png"], REPO / "docs") + ")"
        if result.get("png") and not Path(result["png"]).is_absolute()
        else f"PNG: `{result.get('png') or 'none'}`",
        "",
    ]
    for g in result["groups"]:
        lines += [
            f"### {g['label']} held out"
            + ("" if g.get("complete", True) else " (cut short: rows below only)"),
            "",
            f"{g['n_chips']} chips ({g['n_flooded']} with flood); scored on {g['n_eval']}. "
            f"Zero-shot (starting model, threshold {g['zero_shot']['threshold']:.2f}): "
            f"F1 {_pct(g['zero_shot']['f1'])}, IoU {_pct(g['zero_shot']['iou'])}"
            + (
                f"; it trained in {g['start']['wall_seconds']:.0f} s."
                if "wall_seconds" in g["start"]
                else "."
            ),
            "",
            "| k | chips | Method | F1 | IoU | Precision | Recall | Threshold | Adapt wall (s) | Epochs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in g["rows"]:
            label = _label(r["method"], result)
            if "error" in r:
                lines.append(f"| {r['k']} | {r['selection']} | {label} | error: {r['error']} | | | | | | |")
                continue
            s = r["score"]
            thr = s.get("threshold")
            wall = f"{r['wall_seconds']:.0f}" if r["method"] != "fitted" else "–"
            lines.append(
                f"| {r['k']} | {r['selection']} | {label} | {_pct(s['f1'])} | {_pct(s['iou'])} | "
                f"{_pct(s['precision'])} | {_pct(s['recall'])} | "
                f"{'–' if not isinstance(thr, float) else f'{thr:.2f}'} | {wall} | {r.get('epochs', '–')} |"
            )
        k_u = result["uncertain_k"]
        pairs = [
            (name, _row(g, method, k_u, "uncertain"), _row(g, method, k_u, "random"))
            for name, method in (("calibrated", "calibrate-start"), ("fine-tuned", "adapt-start-all"))
        ]
        compared = [
            f"{name} F1 {_pct(u['score']['f1'])} against {_pct(r['score']['f1'])}"
            for name, u, r in pairs
            if u and r
        ]
        if compared:
            lines += [
                "",
                f"Uncertainty-chosen against random chips (k = {k_u}, from the starting model): "
                + "; ".join(compared)
                + " (ranking the reserved candidates by flip-TTA spread took "
                + f"{g['uncertainty_seconds']:.0f} s).",
            ]
        lines.append("")
    lines += ["### Targets (issue 12)", ""]
    k = t["k"]
    for name, e in t["groups"].items():
        for method in TARGET_METHODS:
            if f"{method}_met" in e:
                lines.append(
                    f"* {name}, k = {k}, {_label(method, result)}: F1 {_pct(e[method])} against "
                    f"fitted threshold {_pct(e['fitted'])} + 5 and zero-shot {_pct(e['zero_shot'])}: "
                    f"**{'met' if e[f'{method}_met'] else 'not met'}**."
                )
    if t["max_adapt_seconds"] is not None:
        lines.append(
            f"* Each adaptation in 5 minutes or less on {m['cpus']} cores: slowest "
            f"{t['max_adapt_seconds']:.0f} s: **{'met' if t['adapt_within_5_min'] else 'not met'}**"
            + (" (with the reduced adaptation budget above)" if result["adapt_budget"] else "")
            + "."
        )
    if not_run:
        lines.append(
            "* The issue asks for every ETCI group and OMBRIA FRANCE: groups not run above are unmeasured."
        )
    lines += ["", f"Raw numbers: `{result['json']}`.", "", SECTION_END]
    return "\n".join(lines)


def check_markdown(result: dict[str, Any]) -> str:
    """Another draw of chips, in one table: per group, zero-shot and every method at the summary's k,
    all scored on the same held-out chips of the group."""
    k = result["summary"]["k"]
    methods = ["fitted", *(m for m in TARGET_METHODS if any(_row(g, m, k) for g in result["groups"]))]
    m = result["machine"]
    lines = [
        CHECK_BEGIN,
        "",
        f"Command: `{result['command']}` ({result['created']}, {m['cpus']} CPUs, "
        f"{result['wall_seconds'] / 60:.0f} min in all)"
        + "".join(
            f"; then `{a['command']}` ({a['wall_seconds'] / 60:.0f} min)" for a in result.get("added", [])
        )
        + f". {' '.join(result.get('notes', []))} F1 in % at k = {k}, every method on the same held-out "
        "chips of the group:",
        "",
        "| Held out | Zero-shot | " + " | ".join(_label(x, result) for x in methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for g in result["groups"]:
        cells = [f"{g['label']} ({g['n_eval']} chips)", _pct(g["zero_shot"]["f1"])]
        for method in methods:
            r = _row(g, method, k)
            cells.append(_pct(r["score"]["f1"]) if r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    t = result["summary"]
    walls = f"slowest adaptation {t['max_adapt_seconds']:.0f} s" if t["max_adapt_seconds"] is not None else ""
    lines += ["", f"Raw numbers: `{result['json']}`{'; ' + walls if walls else ''}.", "", CHECK_END]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """F1 against k per held-out group: both adaptations, the fitted threshold, zero-shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["groups"]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 5), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=False):
        for method, style in (
            ("calibrate-start", "d-."),
            ("calibrate-best", "x:"),
            ("adapt-start", "o:"),
            ("adapt-start-all", "o-"),
            ("adapt-encoder", "s:"),
            ("adapt-encoder-all", "s-"),
            ("fitted", "^--"),
        ):
            pts = [(k, _row(g, method, k)) for k in result["ks"]]
            pts = [(k, 100 * r["score"]["f1"]) for k, r in pts if r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=PLOT_LABELS[method])
        ax.axhline(100 * g["zero_shot"]["f1"], color="grey", ls=":", label="zero-shot (starting model)")
        ur = _row(g, "adapt-start-all", result["uncertain_k"], "uncertain")
        if ur:
            ax.plot(
                [result["uncertain_k"]],
                [100 * ur["score"]["f1"]],
                "r*",
                ms=12,
                label="uncertainty-chosen chips, fine-tuned on every chip",
            )
        ax.set_title(f"{g['label']} held out")
        ax.set_xlabel("k labelled chips")
        ax.set_ylabel("F1 (%)")
        ax.set_xticks(result["ks"])
    # one legend for every panel, below them, so that no line is hidden under it
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    # two columns: the labels name the command behind each line, too long for three side by side
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.26, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def write_outputs(
    result: dict[str, Any], json_path: Path, png: Path, doc: Path, as_check: bool = False
) -> None:
    """The JSON, then the doc section: the main one with its PNG, or (`as_check`) the one-table
    section of another draw of chips."""
    from floodlora.io import atomic_write_json, replace_marked_section

    result["summary"] = summarise(result)
    atomic_write_json(json_path, result)
    if as_check:
        replace_marked_section(
            doc, CHECK_BEGIN, CHECK_END, check_markdown(result), title="# Quality on real data\n"
        )
        return
    plot(result, png)
    replace_marked_section(
        doc, SECTION_BEGIN, SECTION_END, markdown(result), title="# Quality on real data\n"
    )


def budget_text(adapt_budget: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The adaptation options a budget gives, and the doc's words for them."""
    from floodlora.training.adapt import AdaptOptions

    opts = asdict(AdaptOptions(**adapt_budget))
    named = ", ".join(f"{k}={v}" for k, v in adapt_budget.items()) or "`AdaptOptions` defaults"
    batch = opts["batch_size"] or "as many chips as hold 8 crops of 128 px"
    crop = f"crops of {opts['crop_size']} px" if opts["crop_size"] else "whole chips up to 256 px"
    return opts, (
        f"{named} (at most {opts['max_epochs']} epochs x {opts['steps_per_epoch']} batches of {batch}, "
        f"{crop}, lr {opts['lr']:g}, patience {opts['patience']}, cap {opts['max_minutes']} min)"
    )


def redo_rows(
    result: dict[str, Any], methods: Sequence[str], adapt_budget: dict[str, Any], work: Path
) -> None:
    """Measure `methods` again with the current code and `adapt_budget`, on the same chips.

    A budget other than the result's becomes the result's, so every method that trains must be
    among those redone: a table never mixes two fine-tuning budgets.
    """
    if adapt_budget != result["adapt_budget"]:
        present = {r["method"] for g in result["groups"] for r in g["rows"]}
        stale = sorted(m for m in TRAINING_METHODS if m in present and m not in methods)
        if stale:
            raise SystemExit(
                "--redo-methods with another budget must redo every fine-tuning method; "
                f"add {','.join(stale)}"
            )
        opts, text = budget_text(adapt_budget)
        result.update(adapt_budget=adapt_budget, adapt_options=opts, adapt_text=text)
    for g in result["groups"]:
        g["rows"] = [r for r in g["rows"] if r["method"] not in methods]
    # earlier additions whose every row is replaced no longer describe the table (git keeps them)
    result["added"] = [a for a in result.get("added", []) if not set(a["methods"]) <= set(methods)]
    add_rows(result, methods, adapt_budget, work)


def rebuild_workdir(result: dict[str, Any], real: Path, work: Path, log: Any = print) -> None:
    """Train each group's starting run again and cut its chip folders into `work` (a new machine, the
    first run's --workdir gone), from the JSON's budget, k, seed and scoring settings alone.

    The starting runs are seeded; their zero-shot and the fitted rows must come out as the JSON has
    them, or the rows to add would not be comparable and the command stops.
    """
    if result["tiny"]:  # the same few chips per folder, kept beside the runs that link to them
        real = mini_tree(real, work / "real", per_folder=8)
    by_name = {g.name: g for g in select_groups(None)}
    for g in result["groups"]:
        if g["start"].get("reused"):
            raise SystemExit(
                f"--rebuild: {g['name']}'s starting run came from --start-from; it cannot be retrained"
            )
        kept = work / g["name"] / "start"
        again = run_group(
            real, by_name[g["name"]], result["ks"], result["uncertain_k"] or None, result["start_budget"],
            result["adapt_budget"], result.get("encoder", ENCODER), result["seed"], result["max_eval"], work,
            start_from=kept if kept.is_dir() else None, log=log, methods=(),
        )  # fmt: skip
        pairs = [("zero-shot", g["zero_shot"]["f1"], again["zero_shot"]["f1"])]
        fitted = {(r["k"], r["selection"]): r for r in again["rows"] if r["method"] == "fitted"}
        pairs += [
            (
                f"fitted k={r['k']} {r['selection']}",
                r["score"]["f1"],
                fitted[(r["k"], r["selection"])]["score"]["f1"],
            )
            for r in g["rows"]
            if r["method"] == "fitted"
        ]
        for what, was, now in pairs:
            if abs(was - now) > 1e-6:
                raise SystemExit(
                    f"--rebuild: {g['name']} {what} F1 {100 * now:.2f} against the JSON's {100 * was:.2f}: "
                    "the rebuilt runs do not reproduce it"
                )
        log(f"{g['name']}: rebuilt; zero-shot and fitted rows reproduce the JSON's")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=str(REAL), help="the real chips (default ../shared/data/real)")
    p.add_argument("--tiny", action="store_true", help="seconds: random micro encoder, a few chips")
    p.add_argument("--groups", default=None, help="comma-separated held-out groups (default: all)")
    p.add_argument("--ks", default=None, help="comma-separated k (default 5,10,20)")
    p.add_argument("--uncertain-k", type=int, default=None, help="k of the uncertainty comparison (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-eval", type=int, default=None, help="score at most this many chips per group")
    p.add_argument("--start-set", action="append", default=[], help="starting-model override KEY=YAML")
    p.add_argument("--start-from", default=None, help="reuse this starting run (one group only)")
    p.add_argument("--adapt-set", action="append", default=[], help="AdaptOptions override FIELD=YAML")
    p.add_argument("--encoder", default=None, help=f"bare encoder to adapt from (default {ENCODER})")
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/adapt.json)")
    p.add_argument("--png", default=None, help="F1-against-k plot (default docs/images/adapt-f1-vs-k.png)")
    p.add_argument("--markdown", default=None, help="doc to update (default docs/quality.md)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--from-json", action="store_true", help="only regenerate the doc and PNG from the JSON")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="with --add-methods/--redo-methods: train the starting runs and cut the chips into --workdir "
        "again (checked against the JSON's zero-shot and fitted rows) when the first run's are gone",
    )
    p.add_argument(
        "--as-check", action="store_true", help="write the doc's one-table section of another draw of chips"
    )
    p.add_argument(
        "--add-methods",
        default=None,
        help="comma-separated methods to add to the JSON's groups, on the chips kept in --workdir",
    )
    p.add_argument(
        "--redo-methods",
        default=None,
        help="comma-separated methods to measure again (current code, this command's --adapt-set budget), "
        "on the chips kept in --workdir",
    )
    args = p.parse_args(argv)
    json_path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "adapt.json"
    png = Path(args.png) if args.png else (
        json_path.with_suffix(".png") if args.json else REPO / "docs" / "images" / "adapt-f1-vs-k.png"
    )  # fmt: skip
    doc = Path(args.markdown) if args.markdown else REPO / "docs" / "quality.md"
    if args.from_json or args.add_methods or args.redo_methods:
        result = json.loads(json_path.read_text())
        if args.redo_methods and args.add_methods:
            raise SystemExit("--add-methods and --redo-methods: pass one of them per command")
        listed = args.redo_methods or args.add_methods
        if listed:
            flag = "--redo-methods" if args.redo_methods else "--add-methods"
            if not args.workdir:
                raise SystemExit(f"{flag} needs the first run's --workdir (its chips and starting runs)")
            methods = [m for m in listed.split(",") if m]
            unknown = [m for m in methods if m not in (*FROM_START, *FROM_ENCODER)]
            if unknown:
                choices = ", ".join((*FROM_START, *FROM_ENCODER))
                raise SystemExit(f"{flag}: cannot add {unknown}; choose from {choices}")
            t0 = time.perf_counter()
            if args.rebuild:
                rebuild_workdir(result, Path(args.real), Path(args.workdir))
            if args.redo_methods:
                budget = parse_overrides(args.adapt_set, TINY_ADAPT if result["tiny"] else ADAPT_BUDGET)
                redo_rows(result, methods, budget, Path(args.workdir))
            else:
                add_rows(result, methods, result["adapt_budget"], Path(args.workdir))
            command = command_line("adapt.py", argv if argv is not None else sys.argv[1:])
            result.setdefault("added", []).append(
                {"command": command, "methods": methods, "wall_seconds": time.perf_counter() - t0}
                | ({"redone": True} if args.redo_methods else {})
            )
        write_outputs(result, json_path, png, doc, args.as_check)
        return result
    real = Path(args.real)
    if not real.is_dir():
        raise SystemExit(f"{real}: real data folder not found (pass --real)")
    tiny_ctx = None
    if args.tiny:
        tiny_ctx = tempfile.TemporaryDirectory(prefix="adapt-tiny-")
        real = mini_tree(real, Path(tiny_ctx.name) / "real", per_folder=8)
    ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else (TINY_KS if args.tiny else KS)
    uncertain_k = args.uncertain_k if args.uncertain_k is not None else (ks[0] if args.tiny else UNCERTAIN_K)
    start_budget = parse_overrides(args.start_set, TINY_START if args.tiny else START_BUDGET)
    adapt_budget = parse_overrides(args.adapt_set, TINY_ADAPT if args.tiny else ADAPT_BUDGET)
    encoder = args.encoder or ("random:test-micro" if args.tiny else ENCODER)
    groups = select_groups(args.groups)
    from floodlora.config import load_config

    sc = load_config(START_CONFIG, start_budget)
    start_text = (
        f"`--config {START_CONFIG}`"
        + (f" with {', '.join(f'{k}={v}' for k, v in start_budget.items())}" if start_budget else "")
        + f" (at most {sc.train.max_epochs} epochs x {sc.train.limit_train_batches} batches of "
        f"{sc.data.batch_size} crops of {sc.data.crop_size} px, encoder `{sc.model.checkpoint}`), "
        "the group held out"
    )
    opts, adapt_text = budget_text(adapt_budget)
    result: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command_line("adapt.py", argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "tiny": args.tiny,
        "ks": list(ks),
        "uncertain_k": uncertain_k,
        "seed": args.seed,
        "max_eval": args.max_eval,
        "encoder": encoder,
        "start_budget": start_budget,
        "start_text": start_text,
        "adapt_budget": adapt_budget,
        "adapt_options": opts,
        "adapt_text": adapt_text,
        "groups": [],
        "json": rel(json_path),
        "png": rel(png),
        "wall_seconds": 0.0,
    }
    t0 = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="adapt-") if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)  # type: ignore[union-attr]
    done: list[dict[str, Any]] = []

    def partial(current: dict[str, Any] | None) -> None:
        """Write what finished so far (a group in progress is marked incomplete): a cut-short run keeps it."""
        result["groups"] = done + ([current] if current else [])
        result["wall_seconds"] = time.perf_counter() - t0
        write_outputs(result, json_path, png, doc)

    try:
        for group in groups:
            g = run_group(
                real, group, ks, uncertain_k or None, start_budget, adapt_budget, encoder, args.seed,
                args.max_eval, work, Path(args.start_from) if args.start_from else None,
                log=lambda msg: print(msg, flush=True), on_row=partial,
            )  # fmt: skip
            done.append(g)
            partial(None)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
        if tiny_ctx is not None:
            tiny_ctx.cleanup()
    return result


if __name__ == "__main__":
    main()
