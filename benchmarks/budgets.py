"""Time budgets that used to be asserts in the tests (a shared CPU made those flaky).

Measures, on this machine: synthetic scene generation (budget 0.05 s per 128 px scene), writing a
10-scene 64 px synthetic dataset (budget 3 s) and, with `--demo`, `floodlora demo --quick`
(budget 600 s). Writes benchmarks/results/budgets.json; a measurement over its budget is
recorded as such (and makes the script exit 1), not hidden.

    python benchmarks/budgets.py [--repeat 10] [--demo]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "budgets.json"
BUDGETS_S = {"synthetic_scene_128px": 0.05, "synthetic_dataset_10x64px": 3.0, "demo_quick": 600.0}


def measure_scene(repeat: int) -> float:
    """Median seconds of one 128 px synthetic scene (after one warm-up)."""
    import statistics

    from floodlora.data.synthetic import generate_scene

    generate_scene(128, seed=0)
    times = []
    for k in range(repeat):
        t0 = time.perf_counter()
        generate_scene(128, seed=k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_dataset() -> float:
    """Seconds to write 10 synthetic 64 px scenes as GeoTIFFs in the folder layout."""
    from floodlora.data.synthetic import write_folder_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_folder_dataset(Path(tmp) / "syn", n=10, size=64, domain="ood", seed=4)
        return time.perf_counter() - t0


def measure_demo() -> float:
    """The quick demo's own wall_seconds (metrics.json), run through the CLI in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "floodlora.cli", "demo", "--quick", "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=3600)
        return float(json.loads((out / "metrics.json").read_text())["wall_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--demo", action="store_true", help="Also time `floodlora demo --quick`.")
    args = parser.parse_args()
    measured = {
        "synthetic_scene_128px": measure_scene(args.repeat),
        "synthetic_dataset_10x64px": measure_dataset(),
    }
    if args.demo:
        measured["demo_quick"] = measure_demo()
    rows: dict[str, Any] = {
        name: {"seconds": round(s, 4), "budget_s": BUDGETS_S[name], "within_budget": s < BUDGETS_S[name]}
        for name, s in measured.items()
    }
    result = {
        "command": " ".join(
            ["python benchmarks/budgets.py", f"--repeat {args.repeat}"] + ["--demo"] * args.demo
        ),
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budgets": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name}: {row['seconds']:.3f} s (budget {row['budget_s']} s)")
    print(f"written: {OUT}")
    return 0 if all(r["within_budget"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
