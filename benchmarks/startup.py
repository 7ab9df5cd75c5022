"""CLI start-up time: `floodlora --help` and `floodlora <cmd> --help` must answer in under 1.5 s.

Heavy libraries (torch, lightning, peft) are imported inside commands; this measures that the
help paths stay light. Each command runs `--repeat` times in a fresh interpreter; the median is
reported. Writes benchmarks/results/startup.json and a section of docs/performance.md.

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SECTION_BEGIN = "<!-- benchmarks/startup.py: begin -->"
SECTION_END = "<!-- benchmarks/startup.py: end -->"
BUDGET_S = 1.5
COMMANDS = [
    [],
    ["train"],
    ["evaluate"],
    ["sweep"],
    ["predict"],
    ["export"],
    ["demo"],
    ["baseline"],
    ["synth"],
]


def time_command(args: list[str], repeat: int) -> list[float]:
    """Wall seconds of `python -m floodlora.cli ARGS --help`, each in a fresh process."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "floodlora.cli", *args, "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"floodlora {' '.join(args)} --help failed: {proc.stderr.strip()[-300:]}")
    return times


def run(repeat: int, commands: list[list[str]] = COMMANDS) -> dict[str, Any]:
    rows = []
    for args in commands:
        times = time_command(args, repeat)
        median = statistics.median(times)
        rows.append({
            "command": " ".join(["floodlora", *args, "--help"]),
            "median_s": round(median, 3),
            "max_s": round(max(times), 3),
            "within_budget": median < BUDGET_S,
        })  # fmt: skip
    baseline = statistics.median(
        [_time_python(["-c", "pass"]) for _ in range(repeat)]
    )  # interpreter start-up alone, for scale
    return {
        "benchmark": "startup",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "repeat": repeat,
        "budget_s": BUDGET_S,
        "python_startup_s": round(baseline, 3),
        "rows": rows,
        "all_within_budget": all(r["within_budget"] for r in rows),
    }


def _time_python(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True)
    return time.perf_counter() - t0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        SECTION_BEGIN,
        "## CLI start-up",
        "",
        f"`python benchmarks/startup.py` ({result['created']}): median of {result['repeat']} fresh "
        f"processes per command; a bare `python -c pass` takes {result['python_startup_s']:.2f} s here. "
        f"Budget: {result['budget_s']} s.",
        "",
        "| command | median (s) | max (s) | under budget |",
        "|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        ok = "yes" if r["within_budget"] else "NO"
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['max_s']:.2f} | {ok} |")
    lines += ["", "Raw numbers: `benchmarks/results/startup.json`.", SECTION_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "startup.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--commands", default=None, help="comma-separated subcommands ('' for the top level)")
    args = parser.parse_args(argv)

    from floodlora.io import atomic_write_json, replace_marked_section

    commands = COMMANDS if args.commands is None else [[c] if c else [] for c in args.commands.split(",")]
    result = run(args.repeat, commands)
    atomic_write_json(args.json, result)
    if args.markdown:
        replace_marked_section(
            args.markdown, SECTION_BEGIN, SECTION_END, markdown(result), title="# Performance\n"
        )
    for r in result["rows"]:
        print(f"{r['command']}: {r['median_s']:.2f} s")
    return result


if __name__ == "__main__":
    main()
