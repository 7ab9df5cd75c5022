"""CLI start-up time: `floodlora --help` and `floodlora <cmd> --help` must answer in under 1.5 s.

Heavy libraries (torch, lightning, peft) are imported inside commands; this measures that the
help paths stay light. Each command runs `--repeat` times in a fresh interpreter; the median is
reported. Writes benchmarks/results/startup.json and a section of docs/performance.md.

    python benchmarks/startup.py [--repeat 5]
    python benchmarks/startup.py --from-json benchmarks/results/startup.json   # doc section only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, describe_machine, machine_info, markers, rel, write_section

SECTION = "benchmarks/startup.py"
SECTION_BEGIN, SECTION_END = markers(SECTION)
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
        "machine": machine_info(),
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


def markdown(result: dict[str, Any], json_path: str = "benchmarks/results/startup.json") -> str:
    machine = f" Machine: {describe_machine(result['machine'])}." if result.get("machine") else ""
    lines = [
        "## CLI start-up",
        "",
        f"Generated from `{json_path}` (`python benchmarks/startup.py`, {result['created']}): median of "
        f"{result['repeat']} fresh processes per command; a bare `python -c pass` takes "
        f"{result['python_startup_s']:.2f} s here. Budget: {result['budget_s']} s.{machine}",
        "",
        "| command | median (s) | max (s) | under budget |",
        "|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        ok = "yes" if r["within_budget"] else "NO"
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['max_s']:.2f} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "startup.json"))
    parser.add_argument("--markdown", default=str(REPO / "docs" / "performance.md"))
    parser.add_argument("--commands", default=None, help="comma-separated subcommands ('' for the top level)")
    parser.add_argument("--from-json", default=None, help="no measuring: write the doc section of this JSON")
    args = parser.parse_args(argv)

    from floodlora.io import atomic_write_json

    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        write_section(Path(args.markdown), SECTION, markdown(result, rel(Path(args.from_json))))
        return result
    commands = COMMANDS if args.commands is None else [[c] if c else [] for c in args.commands.split(",")]
    result = run(args.repeat, commands)
    atomic_write_json(args.json, result)
    if args.markdown:
        write_section(Path(args.markdown), SECTION, markdown(result, rel(Path(args.json))))
    for r in result["rows"]:
        print(f"{r['command']}: {r['median_s']:.2f} s")
    return result


if __name__ == "__main__":
    main()
