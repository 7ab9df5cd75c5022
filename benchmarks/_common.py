"""Helpers shared by the benchmark scripts (imported as a sibling module: `python benchmarks/X.py`):
the machine description every result records, peak RSS (one method), the matmul peak, and the
generated Markdown sections of the docs."""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def peak_rss_kib() -> float:
    """This process's peak RSS in KiB. Linux: VmHWM (reset by exec; ru_maxrss would carry the
    parent's peak into a forked worker)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_bytes() -> int:
    return int(peak_rss_kib() * 1024)


def matmul_flops_per_s(n: int = 2048, reps: int = 5, device: str = "cpu", dtype: str = "fp32") -> float:
    """n x n matmul throughput in `dtype` (fp32 | bf16): the attainable peak here and now."""
    import torch

    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=tdtype)
    b = torch.randn(n, n, device=device, dtype=tdtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def bf16_matmul_usable(device: str = "cpu") -> bool:
    """Whether timing a bf16 matmul is worth it: CUDA, or a CPU with bf16 instructions (elsewhere
    bf16 is emulated and a 2048^3 product takes minutes)."""
    if device == "cuda":
        return True
    from floodlora.precision import cpu_bf16_flags

    return bool(cpu_bf16_flags())


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: cores, CPU bf16 instructions, torch and its threads, the load,
    this process's nice level, and the GPU if one is visible."""
    import torch

    from floodlora.precision import cpu_bf16_flags

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "nice": os.nice(0),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One sentence from `machine_info()` (keys missing from older results are left out)."""
    parts = [f"{m.get('cpus')} CPU cores ({m.get('processor')}"]
    if "cpu_bf16_flags" in m:
        parts[0] += f"; bf16 instructions: {', '.join(m['cpu_bf16_flags']) or 'none'}"
    parts[0] += ")"
    parts.append(f"torch {m.get('torch')}")
    if m.get("torch_threads") is not None:
        parts.append(f"{m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}")
    if m.get("nice"):
        parts.append(f"nice {m['nice']}")
    if m.get("loadavg_1m") is not None:
        parts.append(f"load average {m['loadavg_1m']:.1f} at the start")
    parts.append(f"GPU: {m['cuda']}" if m.get("cuda") else "no GPU")
    return ", ".join(parts)


def markers(name: str) -> tuple[str, str]:
    """The begin / end comments around a generated section of a doc."""
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_section(path: Path, name: str, body: str, title: str = "# Performance\n") -> None:
    """Replace section `name` of `path` (between its markers) with `body`, other sections untouched."""
    from floodlora.io import replace_marked_section

    begin, end = markers(name)
    replace_marked_section(path, begin, end, f"{begin}\n{body.strip()}\n{end}", title=title)


def set_json_key(path: Path, key: str, value: Any) -> None:
    """Write `value` under `key` of the JSON object in `path` (created if absent), other keys kept.

    Several scripts add their own section to one results file (``quality-explorations.json``).
    """
    import json

    from floodlora.io import atomic_write_json

    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    atomic_write_json(path, data)


def command_line(script: str, argv: list[str]) -> str:
    """The command as a reader would retype it, with no path of the machine that ran it.

    `--workdir` (scratch) and `--real` at its default (../shared/data/real) are left out; paths inside
    the repository become relative, other absolute paths `$TMP/<name>`.
    """
    real = (REPO.parent / "shared" / "data" / "real").resolve()
    words: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "--workdir" or (arg == "--real" and Path(value).resolve() == real):
            skip = True
            continue
        words.append(portable_path(arg))
    return " ".join([f"python benchmarks/{script}", *words])


def portable_path(text: str) -> str:
    """An absolute path as the docs cite it: repository-relative, else `$TMP/<name>`."""
    if not text.startswith("/"):
        return text
    path = Path(text)
    if path.resolve().is_relative_to(REPO):
        return str(path.resolve().relative_to(REPO))
    return f"$TMP/{path.name}"


def rel(path: Path) -> str:
    """`path` relative to the repository where it lies inside it (what the docs cite)."""
    path = Path(path)
    return str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)


def parse_overrides(items: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` updated with ``KEY=YAML`` items (the benchmarks' --set options); a copy, `base` untouched."""
    import copy

    import yaml

    out = copy.deepcopy(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


#: How the scripts that study one held-out run (db_scale.py, db_chips.py) say where RUN came from.
DB_GROUP_RUN = (
    "(RUN: python benchmarks/quality.py --worker c2s-s1f11 recipe --out-dir RUN, the benchmark budget)"
)


#: Where the runs of db_chips.py --each come from: one dB event held out, the other dB chips training.
DB_EVENT_RUNS = (
    "python benchmarks/quality.py --groups db-jja,db-pxs,db-qxb,db-spain --rows recipe --workdir EACH"
)


def held_out_run_args(doc: str, argv: list[str] | None, each: bool = False) -> Any:
    """The command line of a script that studies one held-out run: RUN, --split, --data, --json
    (and, with `each`, --each: a workdir of runs that each hold out one dB event).

    The run's calibrated chips were never in its training, which is the point: the 8-bit-only
    warning is expected there and silenced.
    """
    import argparse
    import warnings

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("run", type=Path, help="a run trained without the calibrated group it is scored on")
    p.add_argument("--split", default="ood", help="the split to score (default ood: the held-out group)")
    p.add_argument("--data", type=Path, action="append", default=[], help="chip roots (default: the run's)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "quality-explorations.json")
    if each:
        p.add_argument("--each", type=Path, help=f"runs that each hold out one dB event: {DB_EVENT_RUNS}")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*8-bit rescaled sources only.*")
    return args
