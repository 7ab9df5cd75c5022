"""One trained run, its held-out calibrated (dB) chips rescored under dB presets of other spreads.

Why: a run trained on 8-bit sources only meets dB data through the encoder's dB preset, and the
preset's spread decides how far water sits from land in standard deviations. Nothing is retrained:
the run's weights and threshold stay, only the preset of its calibrated sources changes, so the
rows isolate the scale. Results go to ``quality-explorations.json`` (key ``db_scale``) and the
exploration tables of ``docs/quality.md``.

    python benchmarks/quality.py --worker c2s-s1f11 recipe --out-dir RUN
    python benchmarks/db_scale.py RUN
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DB_GROUP_RUN, held_out_run_args, set_json_key

#: (label, spread VV/VH in dB): None keeps the named preset's own; others keep floodlora-mini's centre.
CANDIDATES: list[tuple[str, tuple[float, float] | None]] = [
    ("clay-v1.5", None),
    ("floodlora-mini", None),
    ("floodlora-mini centre, spread 3", (3.0, 3.0)),
    ("floodlora-mini centre, spread 5", (5.0, 5.0)),
    ("floodlora-mini centre, spread 6", (6.0, 6.0)),
    ("floodlora-mini centre, Clay's spread", (8.314, 8.017)),
]


def _preset(label: str, spread: tuple[float, float] | None) -> Any:
    from floodlora.data.sar import PRESETS, NormalizationPreset

    base = PRESETS.get(label, PRESETS["floodlora-mini"])
    std = {"vv": spread[0], "vh": spread[1]} if spread else dict(base.std)
    return NormalizationPreset(label, "db", dict(base.mean), std)


def rescore(run: Path, split: str = "ood", roots: list[Path] | None = None) -> list[dict[str, Any]]:
    """Evaluate `run` on `split` (of `roots`, default the run's own) once per candidate preset of its
    calibrated sources."""
    from floodlora.training.engine import evaluate_run

    stored = json.loads((run / "normalization.json").read_text())
    calibrated = sorted(k for k, v in stored.items() if v["units"] in ("db", "linear"))
    if not calibrated:
        raise SystemExit(f"{run}: the run records no calibrated source to rescore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "logs"))
        for label, spread in CANDIDATES:
            preset = _preset(label, spread)
            presets = {k: (preset.to_dict() if k in calibrated else v) for k, v in stored.items()}
            (copy / "normalization.json").write_text(json.dumps(presets, indent=2))
            t0 = time.perf_counter()
            report = evaluate_run(copy, split=split, roots=roots or None)
            half = report.get("at_threshold_0.5", report)
            rows.append(
                {
                    "preset": label,
                    "centre_db": preset.mean,
                    "spread_db": preset.std,
                    "threshold": report["threshold"],
                    "at_run_threshold": {k: report[k] for k in ("f1", "iou", "precision", "recall")},
                    "at_0.5": {"f1": half["f1"]},
                    "oracle": report["oracle"],
                    "n_chips": report["n_chips"],
                    "wall_seconds": time.perf_counter() - t0,
                }
            )
            print(f"{label:40s} F1 {100 * report['f1']:.1f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = held_out_run_args(__doc__, argv)
    result = {
        "command": f"python benchmarks/db_scale.py RUN  {DB_GROUP_RUN}",
        "run": str(args.run),
        "rows": rescore(args.run, args.split, args.data),
    }
    set_json_key(args.json, "db_scale", result)
    return result


if __name__ == "__main__":
    main()
