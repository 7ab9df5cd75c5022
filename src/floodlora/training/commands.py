"""What the `train`, `evaluate` and `sweep` commands do, kept out of cli.py so that it stays thin.

Flags override the YAML config (`--config paper`, `--config cpu-small`, or a file), and any config
key can be set with `--set section.key=value` (the value is read as YAML: `--set data.bands=[vv]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from floodlora.config import RunConfig, load_config
from floodlora.errors import ConfigError


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """`["train.max_epochs=3", "data.bands=[vv]"]` -> dotted overrides with YAML-typed values."""
    import yaml

    out: dict[str, Any] = {}
    for item in sets or []:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.max_epochs=3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build_config(config: str | None, flags: dict[str, Any], sets: list[str] | None = None) -> RunConfig:
    """YAML (or defaults), then explicit flags (None = unset), then `--set` overrides."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_sets(sets))
    return load_config(config, overrides)


def _echo(text: str) -> None:
    from rich.console import Console

    Console().print(text, highlight=False, soft_wrap=True)


def accounting_line(acc: dict[str, Any]) -> str:
    spe = acc.get("seconds_per_epoch")
    ttb = acc.get("time_to_best_val_f1_s")
    return (
        f"trainable {acc['trainable_params']:,} / {acc['total_params']:,} params, "
        f"peak memory {acc['peak_memory_gb']:.2f} GB ({acc['peak_memory_kind']}), "
        f"{acc['epochs']} epochs, {spe or 0:.1f} s/epoch, "
        f"{acc.get('samples_per_second') or 0:.1f} samples/s, time to best val F1 {ttb or 0:.1f} s, "
        f"wall {acc.get('wall_seconds', 0):.1f} s"
        + (f", precision {acc['precision']['precision']}" if acc.get("precision") else "")
    )


def run_train(
    data: list[str] | None,
    format: str | None,
    strategy: str | None,
    rank: int | None,
    checkpoint: str | None,
    config: str | None,
    out: str,
    resume: bool,
    sets: list[str] | None = None,
    max_epochs: int | None = None,
    devices: int | None = None,
    accelerator: str | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> None:
    from floodlora.precision import normalize_precision
    from floodlora.training.engine import format_table2, train_run

    flags = {
        "data.roots": data or None,
        "data.format": format,
        "model.strategy": strategy,
        "model.lora_rank": rank,
        "model.checkpoint": checkpoint,
        "train.max_epochs": max_epochs,
        "train.devices": devices,
        "train.accelerator": accelerator,
        "train.precision": normalize_precision(precision) if precision is not None else None,
    }
    cfg = build_config(config, flags, sets)
    cfg.train.precision = normalize_precision(cfg.train.precision)  # a bad --set is a one-line error
    result = train_run(cfg, out, resume=resume, progress=progress, log=_echo)
    if not result.is_global_zero:
        return
    for split in ("test", "ood"):
        if split in result.metrics:
            report = result.metrics[split]
            _echo(f"\n{split} ({report['n_chips']} chips)\n{format_table2(report)}")
    _echo("\n" + accounting_line(result.accounting))
    _echo(f"run directory: {Path(out)}")


def run_evaluate(
    run_dir: str,
    data: list[str] | None,
    format: str | None,
    split: str,
    json_out: str | None,
    threshold: float | None = None,
    checkpoint: str | None = None,
    views: str | None = None,
    stats_from_data: bool = False,
    precision: str | None = None,
) -> None:
    from floodlora.precision import normalize_precision
    from floodlora.training.engine import evaluate_run, format_table2

    keep = [v.strip() for v in views.split(",") if v.strip()] if views else None
    report = evaluate_run(
        run_dir, data, format, split, threshold, checkpoint, progress=False, json_out=json_out, views=keep,
        stats_from_data=stats_from_data,
        precision=normalize_precision(precision) if precision is not None else None,
    )  # fmt: skip
    p = report["numeric_precision"]
    _echo(f"{split} of {', '.join(report['data']['roots'])}: {report['n_chips']} chips, "
          f"precision {p['precision']} ({p['reason']})")  # fmt: skip
    _echo(format_table2(report))
    if len(report["per_event"]) > 1:
        _echo("\nper event (F1 / IoU in %): " + ", ".join(
            f"{ev} {100 * m['f1']:.2f} / {100 * m['iou']:.2f}" for ev, m in report["per_event"].items()
        ))  # fmt: skip
    oracle = report.get("oracle")
    if oracle is not None and oracle["f1"] > report["f1"] + 0.05:
        # the model ranks these pixels far better than its threshold shows: a few labels fix that
        _echo(
            f"\nat its best threshold on these labels ({oracle['threshold']:.2f}) F1 would be "
            f"{100 * oracle['f1']:.2f}: the run's operating point does not fit these chips; "
            "`floodlora adapt RUN --data CHIPS --out NEW` sets it from a few labelled chips"
        )
    if json_out:
        _echo(f"written: {json_out}")


def parse_eval_sets(items: list[str] | None) -> list[Any]:
    """`NAME=PATH[:FORMAT]` -> EvalSet (evaluated on all its labelled chips)."""
    from floodlora.training.sweep import EvalSet

    out = []
    for item in items or []:
        name, eq, rest = item.partition("=")
        if not eq or not name or not rest:
            raise ConfigError(f"--eval {item!r}: expected NAME=PATH or NAME=PATH:FORMAT")
        path, _, fmt = rest.partition(":")
        out.append(EvalSet(name.strip(), [path], fmt or None))
    return out


def run_sweep(
    data: list[str] | None,
    format: str | None,
    strategies: str,
    checkpoint: str | None,
    config: str | None,
    out: str,
    sets: list[str] | None = None,
    evals: list[str] | None = None,
    progress: bool = True,
) -> None:
    from floodlora.training.sweep import markdown_table, parse_strategies, sweep

    specs = parse_strategies(strategies)
    eval_sets = parse_eval_sets(evals)
    cfg = build_config(
        config, {"data.roots": data or None, "data.format": format, "model.checkpoint": checkpoint}, sets
    )
    result = sweep(cfg, specs, out, eval_sets, progress=progress)
    _echo("\n" + markdown_table(result.rows, eval_sets))
    _echo(f"written: {Path(out) / 'sweep.md'} (+ .csv, .json, .png)")
