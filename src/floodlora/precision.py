"""Numeric precision of training and prediction: what `auto` means on this machine, and autocast.

`auto` is bf16-mixed on CUDA (16-mixed on GPUs without bf16) and, on CPU, bf16-mixed only where
bf16 matmul is fast: the CPU must report AVX512-BF16 or AMX-BF16, and a probe of a few ms must
show bf16 matmul at least `CPU_BF16_MIN_SPEEDUP` times the fp32 rate. Elsewhere it is fp32: without
those instructions bf16 matmul is emulated and hundreds of times slower. The choice and its
reason are kept (accounting.json, the training log, predict's notes) so a run says why it ran as
it did. Lightning-free, so that training, prediction and the benchmarks share it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from floodlora.errors import ConfigError

#: Lightning precision names this project uses, and the short spellings the CLI also accepts.
PRECISIONS: tuple[str, ...] = ("auto", "32-true", "bf16-mixed", "16-mixed")
ALIASES: dict[str, str] = {
    "32": "32-true",
    "fp32": "32-true",
    "bf16": "bf16-mixed",
    "16": "16-mixed",
    "fp16": "16-mixed",
}
#: bf16 must beat fp32 by this factor in the probe; a smaller gain is lost to casts and
#: memory-bound ops (the embedded 192-dim model gained ~5% from a 3x faster matmul). AMX CPUs
#: measure 2-3x in the probe.
CPU_BF16_MIN_SPEEDUP = 1.5
#: Whether `auto` also *trains* in bf16 on such a CPU (prediction always may). The quality check
#: (`benchmarks/quality.py --precision-check`, benchmarks/results/quality-precision.json) must show
#: F1 within MAX_F1_DELTA of fp32 first; until then training stays fp32 (docs/performance.md).
CPU_BF16_AUTO_TRAIN = False
MAX_F1_DELTA = 0.005
#: "0" keeps fp32 under `auto` on any CPU (the test suite sets it: same numbers on every machine);
#: "1" takes bf16 without the probe.
ENV_CPU_BF16 = "FLOODLORA_CPU_BF16"
PROBE_N = 256
PROBE_BUDGET_S = 0.015  # per dtype, after one warm-up each: the probe stays under 100 ms


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses (a Lightning name), what was asked for, and why."""

    precision: str
    requested: str
    reason: str

    @property
    def autocast_dtype(self) -> Any:
        """torch dtype of the autocast region, or None for full fp32."""
        import torch

        if self.precision.startswith("bf16"):
            return torch.bfloat16
        if self.precision.startswith("16"):
            return torch.float16
        return None

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def normalize_precision(name: str | int | None) -> str:
    """`32`, `bf16`, `auto`, `bf16-mixed`, ... -> the Lightning name; anything else is a user error."""
    text = "auto" if name is None else str(name).strip().lower()
    text = ALIASES.get(text, text)
    if text not in PRECISIONS:
        raise ConfigError(
            f"precision {name!r}: choose auto, 32 (fp32), bf16 (bf16-mixed) or 16 (fp16-mixed, CUDA)"
        )
    return text


def cpu_bf16_flags() -> list[str]:
    """The bf16 matmul instructions this CPU reports (torch's own checks, then /proc/cpuinfo)."""
    import torch

    found: list[str] = []
    cpu = getattr(torch, "cpu", None)
    for flag, check in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        fn = getattr(cpu, check, None)
        try:
            if fn is not None and fn():
                found.append(flag)
        except (RuntimeError, AttributeError):  # an older build without the check
            pass
    if not found:
        try:
            words = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            words = set()
        found = [f for f in ("amx_bf16", "avx512_bf16") if f in words]
    return found


def _matmul_rate(dtype: Any, n: int = PROBE_N, budget_s: float = PROBE_BUDGET_S) -> float:
    """n x n matmul FLOP/s in `dtype`: one warm-up, then the fastest of the reps that fit in
    `budget_s` (at least one; the fastest, because other processes only ever slow a rep down)."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best, start = float("inf"), time.perf_counter()
    for _ in range(20):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start >= budget_s:
            break
    return 2.0 * n**3 / best


@functools.lru_cache(maxsize=1)
def cpu_bf16_fast() -> tuple[bool, str]:
    """(use bf16 on this CPU?, why). Probes only where the CPU has bf16 instructions; cached."""
    import torch

    flags = cpu_bf16_flags()
    if not flags:
        return False, "CPU without avx512_bf16 / amx_bf16: bf16 matmul would be emulated"
    # One thread: the per-core ratio is what matters, and a 2-thread OpenMP team on a busy machine
    # spends a small matmul waiting at barriers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        fp32 = _matmul_rate(torch.float32)
        bf16 = _matmul_rate(torch.bfloat16)
        ms = 1000 * (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    ratio = bf16 / fp32
    probe = (
        f"{'+'.join(flags)}; {PROBE_N}^2 matmul probe ({ms:.0f} ms): bf16 {bf16 / 1e9:.0f} vs "
        f"fp32 {fp32 / 1e9:.0f} GFLOP/s ({ratio:.1f}x)"
    )
    if ratio >= CPU_BF16_MIN_SPEEDUP:
        return True, probe
    return False, f"{probe}, under the {CPU_BF16_MIN_SPEEDUP:.1f}x needed to pay for the casts"


def resolve_precision(requested: str | None, accelerator: str, purpose: str = "train") -> PrecisionChoice:
    """The precision for `accelerator` (cpu | gpu | cuda) and `purpose` (train | predict); `auto`
    decides per machine (see the module docstring)."""
    name = normalize_precision(requested)
    if name != "auto":
        return PrecisionChoice(name, name, "set explicitly")
    if accelerator in ("gpu", "cuda"):
        import torch

        # bf16 needs Ampere or newer; older GPUs get fp16 autocast (with Lightning's loss scaling).
        if not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16-mixed", "auto", "CUDA with bf16 support")
        return PrecisionChoice("16-mixed", "auto", "CUDA without bf16 support")
    env = os.environ.get(ENV_CPU_BF16, "").strip()
    if env in ("0", "1"):
        return PrecisionChoice("bf16-mixed" if env == "1" else "32-true", "auto", f"{ENV_CPU_BF16}={env}")
    fast, why = cpu_bf16_fast()
    if fast and purpose == "train" and not CPU_BF16_AUTO_TRAIN:
        return PrecisionChoice(
            "32-true",
            "auto",
            f"{why}; training stays fp32 on CPU until bf16 F1 is shown within "
            f"{100 * MAX_F1_DELTA:.1f} points of fp32 (docs/performance.md); --precision bf16 to use it",
        )
    return PrecisionChoice("bf16-mixed" if fast else "32-true", "auto", why)


def autocast(device_type: str, choice: PrecisionChoice) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for the chosen precision (a no-op context for fp32)."""
    import torch

    dtype = choice.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
