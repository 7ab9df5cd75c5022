"""The generalist starting point, trained as a user builds it: wall time against its 45-minute budget.

    python benchmarks/generalist.py                 # every labelled source under ../shared/data/real
    python benchmarks/generalist.py --from-json     # regenerate the docs section from the JSON only
    python benchmarks/generalist.py --tiny          # seconds: a micro encoder on a few chips per folder

`--config generalist` promises a model trained on every labelled source (post-only ones included)
within 45 minutes on 2 CPU cores with the embedded encoder. This trains it exactly so, on every
labelled chip under the real-data folder (no event held out), and records the wall time of the
whole `train_run` call (reading the chips, fitting, calibration, scoring the test split), the
fitting time, epochs, peak memory and the test split's F1 per event. Results go to
``benchmarks/results/generalist.json``; the section of ``docs/quality.md`` between the markers is
generated from it. The weights are not kept: they were trained on third-party labels (README).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    command_line,
    describe_machine,
    machine_info,
    parse_overrides,
    peak_rss_kib,
    rel,
    write_section,
)
from quality import TINY_BUDGET, _pct, mini_tree

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
NAME = "benchmarks/generalist.py"
CONFIG = "generalist"
BUDGET_MINUTES = 45.0  # the promise of configs/generalist.yaml


def train_generalist(real: Path, out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """`train_run` of the generalist config on every labelled chip under `real`, timed."""
    from floodlora.config import load_config
    from floodlora.training.engine import train_run

    cfg = load_config(CONFIG, {"data.roots": [str(real)], **overrides})
    t0 = time.perf_counter()
    result = train_run(cfg, out)
    wall = time.perf_counter() - t0
    acc = result.accounting
    test = result.metrics.get("test") or {}
    return {
        "wall_seconds": wall,
        "train_seconds": acc.get("train_seconds"),
        "epochs": acc.get("epochs"),
        "early_stopped": acc.get("early_stopped"),
        "max_epochs": cfg.train.max_epochs,
        "max_minutes": cfg.train.max_minutes,
        "steps_per_epoch": cfg.train.limit_train_batches,
        "batch_size": cfg.data.batch_size,
        "crop_size": cfg.data.crop_size,
        "checkpoint": cfg.model.checkpoint,
        "splits": acc["data"]["splits"],
        "status": acc.get("status"),
        "normalization": sorted(acc["data"].get("normalization", {})),
        "peak_rss_gb": peak_rss_kib() / 1024**2,
        "threshold": result.metrics.get("best_threshold"),
        "test": {
            "f1": test.get("f1"),
            "iou": test.get("iou"),
            "n_chips": test.get("n_chips"),
            "per_event": {ev: m.get("f1") for ev, m in (test.get("per_event") or {}).items()},
        },
    }


def markdown(result: dict[str, Any]) -> str:
    r = result["run"]
    minutes = r["wall_seconds"] / 60
    met = minutes <= BUDGET_MINUTES
    lines = [
        "### The generalist starting point: its wall time",
        "",
        f"Command: `{result['command']}` ({result['created']}; {describe_machine(result['machine'])}). "
        f"`--config {CONFIG}` on every labelled chip under the real-data folder, nothing held out "
        "except its own val and test splits ("
        + ", ".join(f"{name} {n}" for name, n in r["splits"].items() if n)
        + f" chips); encoder `{r['checkpoint']}`, at most "
        f"{r['max_epochs']} epochs x {r['steps_per_epoch']} batches of {r['batch_size']} crops of "
        f"{r['crop_size']} px, fitting capped at {r['max_minutes']} min. The weights were not kept.",
        "",
        "| Whole run (read, fit, calibrate, score) | Fitting | Epochs | Peak memory | Test F1 | Goal |",
        "|---|---|---|---|---|---|",
        f"| {minutes:.1f} min | {(r['train_seconds'] or 0) / 60:.1f} min | {_epochs(r)} | "
        f"{r['peak_rss_gb']:.1f} GB | "
        f"{_pct(r['test']['f1'])} | {BUDGET_MINUTES:.0f} min or less: **{'met' if met else 'not met'}** |",
    ]
    if r["test"]["per_event"]:
        lines += [
            "",
            "Test split F1 per event (chips of the training events, not held out: an in-distribution "
            "check, not the leave-one-event-out score): "
            + ", ".join(f"{ev} {_pct(f1)}" for ev, f1 in sorted(r["test"]["per_event"].items()))
            + ".",
        ]
    lines += ["", f"Raw numbers: `{result['json']}`."]
    return "\n".join(lines)


def _epochs(r: dict[str, Any]) -> str:
    """Epochs run, and what ended fitting: all epochs, early stopping, or the time cap."""
    if r["early_stopped"]:
        return f"{r['epochs']} (early stop)"
    if r["epochs"] is not None and r["epochs"] < r["max_epochs"]:
        return f"{r['epochs']} of {r['max_epochs']} (time cap)"
    return str(r["epochs"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=str(REAL), help="the real chips (default ../shared/data/real)")
    p.add_argument("--tiny", action="store_true", help="seconds: random micro encoder, a few chips")
    p.add_argument("--set", action="append", default=[], help="config override KEY=YAML (repeatable)")
    p.add_argument("--json", default=None, help="result JSON (default benchmarks/results/generalist.json)")
    p.add_argument("--markdown", default=None, help="doc to update (default docs/quality.md)")
    p.add_argument("--workdir", default=None, help="keep the run here (default: a temporary folder)")
    p.add_argument("--from-json", action="store_true", help="only regenerate the doc from the JSON")
    args = p.parse_args(argv)
    json_path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / "generalist.json"
    doc = Path(args.markdown) if args.markdown else REPO / "docs" / "quality.md"
    if args.from_json:
        result = json.loads(json_path.read_text())
        write_section(doc, NAME, markdown(result), title="# Quality\n")
        return result
    real = Path(args.real)
    if not real.is_dir():
        raise SystemExit(f"{real}: real data folder not found (pass --real)")
    overrides = parse_overrides(args.set, TINY_BUDGET if args.tiny else {})
    with tempfile.TemporaryDirectory(prefix="generalist-") as tmp:
        if args.tiny:
            real = mini_tree(real, Path(tmp) / "real", per_folder=8)
        work = Path(args.workdir) if args.workdir else Path(tmp) / "run"
        run = train_generalist(real, work, overrides)
    result = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command_line("generalist.py", argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "tiny": args.tiny,
        "overrides": overrides,
        "budget_minutes": BUDGET_MINUTES,
        "within_budget": run["wall_seconds"] / 60 <= BUDGET_MINUTES,
        "run": run,
        "json": rel(json_path),
    }
    from floodlora.io import atomic_write_json

    atomic_write_json(json_path, result)
    write_section(doc, NAME, markdown(result), title="# Quality\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
