"""One Markdown report for a set of runs: the paper's Table 1 and Table 2, baselines, t-SNE, panels.

:func:`write_report` only formats what it is given (run summaries, baseline results, figure paths),
so the demo can call it in-process; :func:`build_report` (``floodlora report``) gathers those from
run directories: it scores the baselines on the first run's own splits, picks the worst and best
test chips of the best run for the panels, and embeds the base (and adapted) encoder for the t-SNE.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floodlora.errors import DataError, FloodLoraError

__all__ = [
    "ReportParts",
    "RunSummary",
    "build_report",
    "gather_report",
    "load_run_summary",
    "run_label",
    "table1",
    "table2",
    "write_report",
]

METRICS = ("accuracy", "precision", "recall", "f1", "iou", "dice")


@dataclass
class RunSummary:
    """What a run directory says about itself, without loading the model."""

    name: str
    run_dir: Path | None
    strategy: str
    rank: int | None
    checkpoint: str
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json: val / test / ood reports
    accounting: dict[str, Any] = field(default_factory=dict)  # accounting.json
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval-<name>.json (extra data)
    data: Any = None  # DataConfig

    @property
    def oom(self) -> bool:
        return str(self.accounting.get("status", "")).lower() == "oom"


def run_label(strategy: str, rank: int | None = None) -> str:
    """Table labels in the paper's words."""
    if strategy == "lora":
        return f"LoRA r-{rank}" if rank else "LoRA"
    return {"frozen": "Frozen encoder", "full": "Full fine-tuning"}.get(strategy, strategy)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable JSON ({err.__class__.__name__})") from None


def load_run_summary(run_dir: str | Path, name: str | None = None) -> RunSummary:
    """Read a run's config, metrics, accounting and eval-*.json files (an OOM run has no metrics)."""
    from floodlora.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir}: not a floodlora run directory (config.yaml is missing)")
    config = load_config(run_dir / "config.yaml")
    metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    accounting = _read_json(run_dir / "accounting.json") if (run_dir / "accounting.json").is_file() else {}
    if not metrics and str(accounting.get("status", "")).lower() != "oom":
        raise DataError(f"{run_dir}: no metrics.json (train the run first, or evaluate it)")
    evals = {p.stem[len("eval-") :]: _read_json(p) for p in sorted(run_dir.glob("eval-*.json"))}
    m = config.model
    rank = m.lora_rank if m.strategy == "lora" else None
    return RunSummary(
        name=name or run_label(m.strategy, rank),
        run_dir=run_dir,
        strategy=m.strategy,
        rank=rank,
        checkpoint=m.checkpoint,
        metrics=metrics,
        accounting=accounting,
        evals=evals,
        data=config.data,
    )


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * float(v):.2f}"


def _params(n: Any) -> str:
    if n is None:
        return "–"
    n = int(n)
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


def _memory(acc: Mapping[str, Any]) -> str:
    gb = acc.get("peak_memory_gb")
    if gb is None:
        return "–"
    kind = {"cuda_max_allocated": "GPU", "cpu_peak_rss": "CPU RSS"}.get(str(acc.get("peak_memory_kind")), "")
    return f"{gb:.2f} GB {kind}".strip()


def _split_report(run: RunSummary, split: str) -> tuple[str, dict[str, Any]] | None:
    """The run's report for `split`, falling back to val when a dataset has no test chips."""
    for name in (split, "val") if split == "test" else (split,):
        if name in run.metrics:
            return name, run.metrics[name]
    return None


def table1(runs: Sequence[RunSummary], baselines: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The paper's Table 1 (in-distribution test split): F1, Accuracy, Precision, IoU, memory, parameters."""
    lines = [
        "| Method | F1 | Accuracy | Precision | IoU | Peak memory | Trainable params |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        acc = run.accounting
        if run.oom:
            cap = acc.get("memory_cap_gb")
            why = f"OOM (cap {cap:g} GB)" if cap else "OOM"
            lines.append(
                f"| {run.name} | {why} | – | – | – | {why} | {_params(acc.get('trainable_params'))} |"
            )
            continue
        found = _split_report(run, "test")
        if found is None:
            lines.append(
                f"| {run.name} | – | – | – | – | {_memory(acc)} | {_params(acc.get('trainable_params'))} |"
            )
            continue
        split, rep = found
        label = run.name if split == "test" else f"{run.name} (val split)"
        cells = " | ".join(_pct(rep.get(k)) for k in ("f1", "accuracy", "precision", "iou"))
        lines.append(f"| {label} | {cells} | {_memory(acc)} | {_params(acc.get('trainable_params'))} |")
    for name, per_split in (baselines or {}).items():
        rep = per_split.get("test")
        if rep is None:
            continue
        cells = " | ".join(_pct(rep.get(k)) for k in ("f1", "accuracy", "precision", "iou"))
        lines.append(f"| {name} | {cells} | – | 0 |")
    return "\n".join(lines)


def _event_rows(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    per = report.get("per_event") or {}
    return dict(per) if per else {"(all)": report}


def table2(runs: Sequence[RunSummary], baselines: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The paper's Table 2 per held-out event: Accuracy, Precision, Recall, F1, IoU, Dice (%).

    Sources: each run's ``ood`` split (data.holdout_events) and its ``eval-*.json`` files
    (evaluations on other data), and the baselines' ``ood`` results.
    """
    rows: list[tuple[str, str, Mapping[str, Any]]] = []
    for run in runs:
        if run.oom:
            continue
        reports = ([run.metrics["ood"]] if "ood" in run.metrics else []) + list(run.evals.values())
        for rep in reports:
            rows += [(ev, run.name, m) for ev, m in _event_rows(rep).items()]
    for name, per_split in (baselines or {}).items():
        if "ood" in per_split:
            rows += [(ev, name, m) for ev, m in _event_rows(per_split["ood"]).items()]
    if not rows:
        return "_No held-out event: the runs have no `ood` split (data.holdout_events) and no eval-*.json._"
    lines = [
        "| Held-out event | Method | Accuracy | Precision | Recall | F1 | IoU | Dice |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {ev: i for i, ev in enumerate(dict.fromkeys(r[0] for r in rows))}
    for ev, name, m in sorted(rows, key=lambda r: order[r[0]]):
        lines.append(f"| {ev} | {name} | " + " | ".join(_pct(m.get(k)) for k in METRICS) + " |")
    return "\n".join(lines)


def _probe_table(probes: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| Encoder | Probe accuracy | Balanced accuracy | Chance (majority) | Train / test patches |",
        "|---|---|---|---|---|",
    ]
    for name, p in probes.items():
        lines.append(
            f"| {name} | {_pct(p['accuracy'])} | {_pct(p['balanced_accuracy'])} | {_pct(p['chance'])} | "
            f"{p['n_train']} / {p['n_test']} |"
        )
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    runs: Sequence[RunSummary | str | Path],
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    probes: Mapping[str, Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
    title: str = "floodlora report",
    intro: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/report.md``: Table 1, Table 2, baselines, probe table, figures (relative links).

    `baselines`: label -> {"test": result, "ood": result} (results from :func:`run_baseline`);
    `figures`: caption -> PNG path (must exist; copied next to the report when elsewhere).
    """
    import shutil

    from floodlora.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [r if isinstance(r, RunSummary) else load_run_summary(r) for r in runs]
    parts = [f"# {title}", ""]
    for paragraph in intro:
        parts += [paragraph, ""]
    if summaries:
        parts.append("Runs: " + ", ".join(f"`{s.run_dir or s.name}` ({s.name})" for s in summaries) + ".")
        parts.append("")
    parts += [
        "## In-distribution (test split) — Table 1",
        "",
        "Metrics in %, micro-averaged over the valid pixels of the split (positive class = flood), at "
        "threshold 0.5."
        + (
            " Baselines are scored on the same chips with the same metrics and nodata rules."
            if baselines
            else ""
        ),
        "",
        table1(summaries, baselines),
        "",
        "## Out-of-distribution (held-out events) — Table 2",
        "",
        table2(summaries, baselines),
        "",
    ]
    if baselines:
        parts += [
            "## Baselines",
            "",
            "| Baseline | Split | Threshold | F1 | IoU | Chips |",
            "|---|---|---|---|---|---|",
        ]
        for name, per_split in baselines.items():
            for split, rep in per_split.items():
                thr = rep.get("baseline", {}).get("threshold_value")
                if isinstance(thr, dict):
                    thr = ", ".join(
                        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in thr.items()
                    )
                elif isinstance(thr, float):
                    thr = f"{thr:.2f}"
                f1, iou = _pct(rep["f1"]), _pct(rep["iou"])
                parts.append(f"| {name} | {split} | {thr} | {f1} | {iou} | {rep.get('n_chips')} |")
        values = sorted(
            {r.get("baseline", {}).get("value", "") for p in baselines.values() for r in p.values()}
        )
        parts += [
            "",
            f"Values thresholded: {'; '.join(v for v in values if v)}. Flood = value below the threshold "
            "(open water is dark; a flood lowers backscatter). Per-chip thresholds are summarised by their "
            "median and 10th / 90th percentiles.",
            "",
        ]
    if probes:
        parts += [
            "## Does the encoder separate water and land?",
            "",
            "Linear probe (standardised, class-balanced logistic regression) on held-out 8x8 patch "
            "embeddings; label = majority of the patch's pixels.",
            "",
            _probe_table(probes),
            "",
        ]
    for caption, path in (figures or {}).items():
        src = Path(path)
        if not src.is_file():
            raise DataError(f"figure {caption!r}: {src} does not exist")
        dest = out / src.name
        if src.resolve() != dest.resolve():
            shutil.copyfile(src, dest)
        parts += [f"## {caption}", "", f"![{caption}]({dest.name})", ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    report = out / "report.md"
    atomic_write_text(report, "\n".join(parts))
    return report


# --------------------------------------------------------------------------------------------------
# gathering everything from run directories (floodlora report)
# --------------------------------------------------------------------------------------------------

DEFAULT_BASELINES: tuple[tuple[str, str, str], ...] = (
    ("otsu", "both", "chip"),
    ("otsu", "both", "fitted"),
    ("change", "both", "chip"),
    ("change", "both", "fitted"),
)


def score_baselines(data: Any, splits: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The default baselines on each split of `data` (a DataConfig); notes say what could not run."""
    from floodlora.analysis.baselines import baseline_for_data, baseline_name

    out: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for method, band, mode in DEFAULT_BASELINES:
        name = baseline_name(method, band, mode)
        for split in splits:
            try:
                res = baseline_for_data(method, None, None, split, band, mode, config=data, per_chip=False)
            except FloodLoraError as err:
                notes.append(f"{name} on {split}: not run ({err})")
                break
            out.setdefault(name, {})[split] = res
    return out, notes


def _best_run(runs: Sequence[RunSummary]) -> RunSummary | None:
    scored = [r for r in runs if not r.oom and _split_report(r, "test")]
    return max(scored, key=lambda r: _split_report(r, "test")[1]["f1"], default=None)  # type: ignore[index]


def _panel_figure(
    runs: Sequence[RunSummary], best: RunSummary, split: str, out_png: Path, k: int
) -> Path | None:
    """Worst/best chips of `best` on `split`, every run's prediction side by side, plus Otsu."""
    from floodlora.analysis.baselines import run_baseline, select_refs
    from floodlora.analysis.panels import prediction_panels, run_predictions
    from floodlora.data.sources import read_sample

    found = _split_report(best, split)
    if found is None or not found[1].get("per_chip"):
        return None
    split, rep = found
    per_chip = {c: m["f1"] for c, m in rep["per_chip"].items()}
    ranked = sorted(per_chip, key=lambda c: (per_chip[c], c))
    n_worst = (k + 1) // 2
    chosen = list(dict.fromkeys(ranked[:n_worst] + ranked[::-1][: k - n_worst]))
    # per_chip is keyed by source:path (runs written before that: by chip id)
    all_refs = select_refs(best.data.roots, best.data.format, split, best.data)
    refs = [r for r in all_refs if r.key in chosen or r.chip_id in chosen]
    refs.sort(key=lambda r: chosen.index(r.key if r.key in chosen else r.chip_id))
    if not refs:
        return None
    predictions: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.oom or run.run_dir is None:
            continue
        predictions[run.name] = run_predictions(run.run_dir, refs)
    samples = [read_sample(r) for r in refs]
    try:
        otsu = run_baseline("otsu", samples, "both", "chip", keep_predictions=True, max_nodata_fraction=None)
        predictions["Otsu (per chip)"] = otsu["predictions"]
    except FloodLoraError:
        pass
    title = f"{split} split: worst and best chips of {best.name} (per-chip F1)"
    return prediction_panels(samples, predictions, out_png, title=title)


def _embedding_figures(
    runs: Sequence[RunSummary], best: RunSummary | None, out: Path, max_chips: int, seed: int
) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """t-SNE of the base encoder and of the best adapted (LoRA / full) one + a probe for every encoder."""
    from floodlora.analysis.baselines import read_samples, select_refs, subsample
    from floodlora.analysis.embeddings import linear_probe, patch_embeddings, tsne_figure
    from floodlora.data.datamodule import preset_for, resolve_presets
    from floodlora.models.registry import load_encoder
    from floodlora.runs import load_run

    ref_run = best or next(r for r in runs if not r.oom)
    data = ref_run.data
    test_refs = select_refs(data.roots, data.format, "test", data)
    fmt = test_refs[0].format  # one source: one normalisation
    test_refs = [r for r in test_refs if r.format == fmt]
    samples = read_samples(subsample(test_refs, max_chips), data.max_nodata_fraction)
    if not samples:
        return {}, {}
    try:
        train = select_refs(data.roots, data.format, "train", data)
    except FloodLoraError:
        train = []
    preset = preset_for(resolve_presets(data.normalization, test_refs, train), test_refs[0])
    figures: dict[str, Path] = {}
    probes: dict[str, dict[str, Any]] = {}
    best_adapted = _best_run([r for r in runs if r.strategy != "frozen"])
    base_name = f"base encoder `{ref_run.checkpoint}`"
    feats, labels, events = patch_embeddings(load_encoder(ref_run.checkpoint), samples, data.bands, preset)
    probes[base_name] = linear_probe(feats, labels, seed=seed)
    figures[f"t-SNE of patch embeddings: {base_name}"] = tsne_figure(
        feats, labels, events, out / "tsne_base.png", seed=seed, title=f"Patch embeddings, {base_name}"
    )
    for run in runs:
        if run.oom or run.strategy == "frozen" or run.run_dir is None:
            continue
        model = load_run(run.run_dir).model
        f, lab, ev = patch_embeddings(model, samples, data.bands, preset)
        probes[f"{run.name} (adapted)"] = linear_probe(f, lab, seed=seed)
        if run is best_adapted:
            figures[f"t-SNE of patch embeddings: {run.name} (adapted encoder)"] = tsne_figure(
                f, lab, ev, out / "tsne_adapted.png", seed=seed, title=f"Patch embeddings, {run.name}"
            )
    return figures, probes


@dataclass
class ReportParts:
    """Everything a report shows, gathered from run directories (the demo adds its own notes)."""

    runs: list[RunSummary]
    baselines: dict[str, dict[str, Any]]
    figures: dict[str, Path]
    probes: dict[str, dict[str, Any]]
    notes: list[str]


def build_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    baselines: bool = False,
    figures: bool = True,
    panel_chips: int = 4,
    embed_chips: int = 16,
    seed: int = 0,
) -> Path:
    """``floodlora report``: tables from the runs, optional baselines on their splits, t-SNE and panels."""
    parts = gather_report(run_dirs, out_dir, baselines, figures, panel_chips, embed_chips, seed)
    return write_report(out_dir, parts.runs, parts.baselines, parts.figures, parts.probes, parts.notes)


def gather_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    baselines: bool = False,
    figures: bool = True,
    panel_chips: int = 4,
    embed_chips: int = 16,
    seed: int = 0,
) -> ReportParts:
    """Load the runs, score the baselines on their splits, draw panels and t-SNE figures into `out_dir`."""
    if not run_dirs:
        raise DataError("no run directories given")
    out = Path(out_dir)
    runs = [load_run_summary(r) for r in run_dirs]
    _dedupe_names(runs)
    notes: list[str] = []
    data = next((r.data for r in runs), None)
    if any(_data_key(r.data) != _data_key(data) for r in runs):
        notes.append("The runs use different data settings; baselines follow the first run's.")
    scored: dict[str, dict[str, Any]] = {}
    if baselines and data is not None:
        splits = ["test"] + (["ood"] if data.holdout_events else [])
        scored, more = score_baselines(data, splits)
        notes += more
    figs: dict[str, Path] = {}
    probes: dict[str, dict[str, Any]] = {}
    if figures:
        best = _best_run(runs)
        if best is not None:
            for split in ("test", "ood"):
                png = _panel_figure(runs, best, split, out / f"panels_{split}.png", panel_chips)
                if png is not None:
                    figs[f"Predictions, {split} split (worst and best chips)"] = png
        try:
            f2, probes = _embedding_figures(runs, best, out, embed_chips, seed)
            figs.update(f2)
        except FloodLoraError as err:
            notes.append(f"t-SNE / probe not drawn: {err}")
    return ReportParts(runs, scored, figs, probes, notes)


def _data_key(d: Any) -> tuple[Any, ...]:
    if d is None:
        return ()
    return (tuple(d.roots), d.format, tuple(d.holdout_events), d.seed, d.val_fraction, d.test_fraction)


def _dedupe_names(runs: list[RunSummary]) -> None:
    """Two runs with the same label (e.g. two LoRA r-8 runs) get their directory name appended."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
    for r in runs:
        if seen[r.name] > 1 and r.run_dir is not None:
            r.name = f"{r.name} ({r.run_dir.name})"
