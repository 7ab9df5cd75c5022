"""The strategy sweep behind the paper's Table 1: train + evaluate each strategy, tabulate, plot.

A strategy spec is `frozen`, `full`, `lora` (the config's rank) or `lora:R`. A strategy that runs
out of memory (really, or above `train.memory_cap_gb`) becomes an "OOM" row and the sweep goes on,
as in the paper where full fine-tuning did not fit a 40 GB GPU. The table is rewritten after every
strategy, so an interrupted sweep keeps what it finished.
"""

from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floodlora.config import RunConfig
from floodlora.errors import ConfigError
from floodlora.io import atomic_write_json, atomic_write_text, atomic_write_with
from floodlora.models.strategies import strategy_class
from floodlora.training.accounting import OutOfMemoryError

TABLE_STEM = "sweep"


@dataclass
class EvalSet:
    """Extra data to evaluate every trained strategy on (e.g. an unseen flood event)."""

    name: str
    roots: list[str]
    format: str | None = None
    split: str = "all"


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)


def parse_strategies(text: str) -> list[tuple[str, str, int | None]]:
    """'frozen,lora:8,full' -> [(label, strategy, rank)]."""
    out: list[tuple[str, str, int | None]] = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw:
            continue
        name, _, rank = raw.partition(":")
        if name not in ("frozen", "lora", "full"):
            raise ConfigError(f"--strategies: unknown strategy {name!r} (use frozen, lora:R, full)")
        if rank and name != "lora":
            raise ConfigError(f"--strategies: only lora takes a rank, got {raw!r}")
        try:
            r = int(rank) if rank else None
        except ValueError:
            raise ConfigError(f"--strategies: rank must be an integer in {raw!r}") from None
        if r is not None and r < 1:
            raise ConfigError(f"--strategies: rank must be >= 1 in {raw!r}")
        out.append((raw, name, r))
    if not out:
        raise ConfigError("--strategies: no strategy given")
    return out


def sweep(
    config: RunConfig,
    strategies: str | list[tuple[str, str, int | None]],
    out_dir: str | Path,
    eval_sets: list[EvalSet] | None = None,
    progress: bool = False,
) -> SweepResult:
    """Train and evaluate each strategy into `out_dir/<label>/`; write sweep.{md,csv,json,png}."""
    from floodlora.training.engine import evaluate_run, train_run

    specs = parse_strategies(strategies) if isinstance(strategies, str) else strategies
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult(out)
    for label, strategy, rank in specs:
        cfg = copy.deepcopy(config)
        cfg.model.strategy = strategy
        if rank is not None:
            cfg.model.lora_rank = rank
        # The feature cache serves frozen encoders only; in a sweep it applies to the frozen rows.
        if not strategy_class(strategy).constant_encoder:
            cfg.train.feature_cache = False
        run_dir = out / label.replace(":", "-")
        row: dict[str, Any] = {"strategy": label, "run_dir": run_dir.name}
        t0 = time.perf_counter()
        try:
            trained = train_run(cfg, run_dir, progress=progress)
        except OutOfMemoryError as err:
            acc = getattr(err, "accounting", {})
            row.update(
                status="OOM",
                error=str(err),
                trainable_params=acc.get("trainable_params"),
                total_params=acc.get("total_params"),
                wall_seconds=time.perf_counter() - t0,
            )
            result.rows.append(row)
            write_sweep_table(result.rows, out, eval_sets)
            continue
        if not trained.is_global_zero:
            continue
        test = trained.metrics.get("test") or trained.metrics["val"]
        acc = trained.accounting
        row.update(
            status="ok",
            eval_split="test" if "test" in trained.metrics else "val",
            **{k: test[k] for k in ("f1", "accuracy", "precision", "recall", "iou", "dice")},
            best_threshold=trained.metrics["best_threshold"],
            f1_at_best_threshold=test.get("at_best_threshold", {}).get("f1"),
            peak_memory_gb=acc["peak_memory_gb"],
            peak_memory_kind=acc["peak_memory_kind"],
            tensor_memory_gb=acc["tensor_memory_gb"],
            trainable_params=acc["trainable_params"],
            total_params=acc["total_params"],
            epochs=acc["epochs"],
            seconds_per_epoch=acc["seconds_per_epoch"],
            samples_per_second=acc["samples_per_second"],
            time_to_best_val_f1_s=acc["time_to_best_val_f1_s"],
            train_wall_seconds=acc["wall_seconds"],
        )
        for es in eval_sets or []:
            rep = evaluate_run(run_dir, es.roots, es.format, es.split, threshold=0.5)  # as the test columns
            atomic_write_json(run_dir / f"eval-{es.name}.json", rep)
            row[f"{es.name}_f1"] = rep["f1"]
            row[f"{es.name}_iou"] = rep["iou"]
            row[f"{es.name}_precision"] = rep["precision"]
            row[f"{es.name}_recall"] = rep["recall"]
            row[f"{es.name}_f1_at_best_threshold"] = rep.get("at_best_threshold", {}).get("f1")
            row[f"{es.name}_missing_views"] = ",".join(rep.get("missing_views", []))
        row["wall_seconds"] = time.perf_counter() - t0
        result.rows.append(row)
        write_sweep_table(result.rows, out, eval_sets)
    return result


# --------------------------------------------------------------------------------------------------
# table + figure
# --------------------------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * float(v):.2f}"


def _num(v: Any, fmt: str = "{:.1f}") -> str:
    return "" if v is None else fmt.format(float(v))


def markdown_table(rows: list[dict[str, Any]], eval_sets: list[EvalSet] | None = None) -> str:
    """Table 1 of the paper (F1, accuracy, precision, IoU in %, memory, trainable parameters) + timing."""
    extra = [es.name for es in eval_sets or []]
    head = ["Strategy", "F1", "Accuracy", "Precision", "Recall", "IoU", "F1@t*"]
    head += [f"{n} F1" for n in extra] + [f"{n} IoU" for n in extra]
    head += ["Tensor memory (GB)", "Peak memory (GB)", "Trainable params"]
    head += ["s/epoch", "Time to best val F1 (s)", "Wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = "" if r.get("trainable_params") is None else f"{int(r['trainable_params']):,}"
        if r.get("status") == "OOM":
            cells = [
                r["strategy"],
                *["OOM"] * (6 + 2 * len(extra)),
                "OOM",
                "OOM",
                params,
                "",
                "",
                _num(r.get("wall_seconds")),
            ]
        else:
            cells = [
                r["strategy"],
                *(
                    _pct(r.get(k))
                    for k in ("f1", "accuracy", "precision", "recall", "iou", "f1_at_best_threshold")
                ),
                *(_pct(r.get(f"{n}_f1")) for n in extra),
                *(_pct(r.get(f"{n}_iou")) for n in extra),
                _num(r.get("tensor_memory_gb"), "{:.3f}"),
                _num(r.get("peak_memory_gb"), "{:.2f}"),
                params,
                _num(r.get("seconds_per_epoch")),
                _num(r.get("time_to_best_val_f1_s")),
                _num(r.get("wall_seconds")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_sweep_table(
    rows: list[dict[str, Any]], out_dir: str | Path, eval_sets: list[EvalSet] | None = None
) -> None:
    """sweep.md, sweep.csv, sweep.json and sweep.png in `out_dir` (all atomic)."""
    out = Path(out_dir)
    md = markdown_table(rows, eval_sets)
    note = (
        "\nMetrics in % on the test split at threshold 0.5 (F1@t*: at the val-F1-optimal threshold). "
        "Peak memory: CUDA max allocated on GPU, process peak RSS on CPU (includes the Python runtime). "
        "Tensor memory: weights + gradients + Adam moments + saved activations, what a GPU would hold.\n"
    )
    atomic_write_text(out / f"{TABLE_STEM}.md", md + note)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / f"{TABLE_STEM}.csv", buf.getvalue())
    atomic_write_json(out / f"{TABLE_STEM}.json", {"rows": rows})
    atomic_write_with(out / f"{TABLE_STEM}.png", lambda p: _plot(rows, p))


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """F1 against trainable parameters and against peak memory; OOM strategies drawn as red crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "trainable_params", "trainable parameters"),
                           (axes[1], "peak_memory_gb", "peak memory (GB)")):  # fmt: skip
        for r in rows:
            x = r.get(key)
            if r.get("status") == "OOM":
                if x is not None:
                    ax.scatter([x], [0.0], marker="x", color="red")
                    ax.annotate(f"{r['strategy']} (OOM)", (x, 0.0), textcoords="offset points", xytext=(4, 4))
                continue
            if x is None or r.get("f1") is None:
                continue
            ax.scatter([x], [100 * r["f1"]], color="tab:blue")
            ax.annotate(r["strategy"], (x, 100 * r["f1"]), textcoords="offset points", xytext=(4, 4))
        if key == "trainable_params":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test F1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Adaptation strategies: F1 vs cost")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
