"""The work behind ``floodlora synth`` and ``floodlora stats`` (the CLI functions stay one line)."""

from __future__ import annotations

from pathlib import Path


def run_synth(
    out: str | Path, n: int, size: int, domain: str, seed: int, splits: str, views: str, target: str
) -> str:
    """Write a synthetic folder dataset and return a one-line summary."""
    from floodlora.data.synthetic import parse_splits, write_folder_dataset

    view_list = [v.strip() for v in views.split(",") if v.strip()]
    counts = write_folder_dataset(
        out, n, size, domain, seed, parse_splits(splits), view_list, ("vv", "vh"), target
    )
    parts = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"wrote {n} synthetic {domain} scenes of {size} px to {out} ({parts})"


def run_stats(data: list[str], format: str | None, out: str | Path, max_chips: int | None = None) -> str:
    """Stream per-band statistics over every chip under `data` into a stats YAML; return a summary."""
    from floodlora.data.sar import compute_stats, save_stats
    from floodlora.data.sources import discover

    refs = discover(list(data), format)
    stats = compute_stats(refs, max_chips=max_chips)
    stats["roots"] = [str(Path(d).resolve()) for d in data]
    save_stats(stats, out)
    bands = "; ".join(f"{b} mean {v['mean']:.3f} std {v['std']:.3f}" for b, v in stats["bands"].items())
    return f"{stats['n_chips']} chips ({stats['units']}): {bands} -> {out}"
