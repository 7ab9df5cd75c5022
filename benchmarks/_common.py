"""Helpers shared by the benchmark scripts (imported as a sibling module: `python benchmarks/X.py`)."""

from __future__ import annotations

import resource
from pathlib import Path


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
