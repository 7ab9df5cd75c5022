"""Regenerate every generated section of docs/performance.md from the committed result JSONs.

    python benchmarks/docs.py            # no measuring; `make bench` runs it after the benchmarks

Sections: each benchmark's own (strategies, every predict*.json, startup) and the precision summary,
which draws on several JSONs. Every number on the page comes from benchmarks/results/*.json through
this script or the benchmark that wrote the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import REPO, rel, write_section

RESULTS = REPO / "benchmarks" / "results"
PRECISION_SECTION = "benchmarks/docs.py precision"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _training_sentences(strategies: dict[str, Any] | None) -> list[str]:
    out = []
    cpus = (strategies or {}).get("machine", {}).get("cpus")
    for name, suite in (strategies or {}).get("suites", {}).items():
        c = suite["configs"]
        for row, speedup in suite.get("ratios", {}).get("bf16_speedup", {}).items():
            fp32, bf16 = c.get(row, {}), c.get(f"{row}-bf16", {})
            if speedup is None or "error" in fp32 or "error" in bf16:
                continue
            mem = suite["ratios"].get("bf16_over_fp32_memory", {}).get(row)
            loads = [x for r in (fp32, bf16) for x in (r.get("loadavg_1m_start"), r.get("loadavg_1m_end"))]
            loads = [x for x in loads if x is not None]
            out.append(
                f"* {suite['preset']} {suite['size']} px, batch {suite['batch']} x "
                f"{len(suite['views'])} views "
                f"({name}), {row}: {bf16['seconds_per_step']:.2f} s per step under bf16 autocast against "
                f"{fp32['seconds_per_step']:.2f} s in fp32 ({speedup:.2f}x)"
                + (
                    f", peak RSS {bf16['peak_rss_bytes'] / 1024**3:.2f} GB against "
                    f"{fp32['peak_rss_bytes'] / 1024**3:.2f} GB ({mem:.2f}x)"
                    if mem is not None
                    else ""
                )
                + f"; MFU {bf16.get('mfu', 0):.0%} of the bf16 peak against {fp32.get('mfu', 0):.0%} of the "
                f"fp32 peak"
                + (f" (1-min load {min(loads):.1f}-{max(loads):.1f} on {cpus} cores)." if loads else ".")
            )
    return out


def _predict_sentences(predicts: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for path, res in predicts.items():
        cmp = res.get("bf16_vs_fp32")
        if not cmp:
            if res.get("skipped"):
                out.append(f"* `{path}`: no bf16 row ({res['skipped']}).")
            continue
        cfg = res["config"]
        out.append(
            f"* `{cfg['checkpoint']}` encoder, {cfg['size']} x {cfg['size']} px scene (`{path}`): "
            f"{cmp['km2_per_s_speedup']:.2f}x the km2/s of fp32, {cmp['peak_rss_ratio']:.2f}x the peak RSS, "
            f"{100 * cmp['mask_identical_fraction']:.3f}% of the mask pixels identical (the untrained model "
            f"marks {100 * cmp['flood_fraction_fp32']:.1f}% as flood)"
            + (
                f", {100 * cmp['identical_at_median_fraction']:.2f}% identical at the fp32 probabilities' "
                "median threshold, where half the pixels fall on each side."
                if "identical_at_median_fraction" in cmp
                else "."
            )
        )
    return out


def _target_lines(strategies: dict[str, Any] | None, predicts: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    keys = ("bf16_speedup", "mfu_bf16")
    for name, ts in (strategies or {}).get("targets", {}).items():
        for t in ts:
            if t["key"] in keys:
                v = f"{t['value']:.0%}" if t["unit"] == "fraction" else f"{t['value']:.2f}x"
                out.append(f"* {t['target']} ({name}): {v}, {'met' if t['met'] else 'not met'}.")
    for res in predicts.values():
        cmp = res.get("bf16_vs_fp32")
        if cmp and str(res["config"]["checkpoint"]).endswith("clay-v1-base"):
            out.append(
                f"* base-encoder prediction >= {cmp['speedup_target']:.1f}x km2/s: "
                f"{cmp['km2_per_s_speedup']:.2f}x, {'met' if cmp['speedup_met'] else 'not met'}."
            )
            worst = min(cmp["mask_identical_fraction"], cmp.get("identical_at_median_fraction", 1.0))
            out.append(
                f"* masks >= {100 * cmp['agreement_target']:.1f}% identical to fp32: {100 * worst:.2f}% "
                f"at the stricter threshold, {'met' if cmp['agreement_met'] else 'not met'}."
            )
    return out


def precision_markdown(
    strategies: dict[str, Any] | None,
    predicts: dict[str, dict[str, Any]],
    quality: dict[str, Any] | None,
    quality_path: str = "benchmarks/results/quality-precision.json",
) -> str:
    """The precision summary: what `auto` does and the measurements behind it."""
    from floodlora.precision import CPU_BF16_AUTO_TRAIN, CPU_BF16_MIN_SPEEDUP, MAX_F1_DELTA, PROBE_N

    lines = [
        "## Precision: fp32 and bf16 on CPU",
        "",
        "`train.precision: auto`, and `--precision auto` on `predict` and `evaluate`, pick bf16-mixed on "
        "CUDA (16-mixed on GPUs without bf16). On a CPU they pick bf16 only where it is fast: the CPU "
        "must report `avx512_bf16` or `amx_bf16` (torch's own checks, then /proc/cpuinfo), and a probe "
        f"of one {PROBE_N} x {PROBE_N} matmul per dtype on one thread (well under 100 ms) must show bf16 at "
        f"least {CPU_BF16_MIN_SPEEDUP:.1f}x as fast as fp32. Elsewhere, nothing changes: fp32. The choice "
        "and its reason go to `accounting.json` (`precision`), the training log, `evaluate`'s report and "
        "`predict`'s notes; `--precision 32|bf16` overrides it, and `FLOODLORA_CPU_BF16=0` keeps fp32 "
        "under `auto` on any machine (the test suite does). Under CPU autocast the matmuls run in bf16 "
        "while the loss, the metrics and the Clay encoder's residual stream stay fp32, as in Clay "
        "(`tests/test_precision.py`).",
        "",
    ]
    ok = quality is not None and not quality.get("tiny") and quality.get("delta_f1_points") is not None
    if ok:
        assert quality is not None
        rows = quality["rows"]
        lines.append(
            f"Quality (`{quality_path}`, {quality['created']}, `{quality['command']}`): the recipe with "
            f"{quality['label']} held out scores F1 {100 * rows['32-true']['at_run_threshold']['f1']:.1f} in "
            f"fp32 and {100 * rows['bf16-mixed']['at_run_threshold']['f1']:.1f} in bf16 "
            f"({quality['delta_f1_points']:+.2f} points; the bound is +-{100 * MAX_F1_DELTA:.1f})."
        )
    else:
        lines.append(
            "Quality: the fp32-against-bf16 F1 comparison (`python benchmarks/quality.py "
            "--precision-check GROUP`, about two recipe trainings) has not been run and committed for this "
            "page, so its bound (F1 within "
            f"{100 * MAX_F1_DELTA:.1f} points of fp32) is not shown to hold."
        )
    lines.append(
        "Training under `auto` on CPU therefore "
        + (
            "uses bf16 where the CPU is fast at it."
            if CPU_BF16_AUTO_TRAIN
            else "stays fp32 (`floodlora.precision.CPU_BF16_AUTO_TRAIN` is off); prediction and evaluation "
            "use bf16 where it is fast. `--precision bf16` trains in bf16 on request."
        )
    )
    targets = _target_lines(strategies, predicts)
    if targets:
        lines += [
            "",
            "Targets for bf16 (from the JSONs below; the embedded model is not held to the speed-ups):",
            "",
        ]
        lines += targets
    train = _training_sentences(strategies)
    if train:
        lines += ["", "Training steps (`benchmarks/results/strategies.json`):", "", *train]
    pred = _predict_sentences(predicts)
    if pred:
        lines += ["", "Whole-scene prediction, bf16 against fp32:", "", *pred]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--results", default=str(RESULTS), help="folder of result JSONs")
    p.add_argument("--markdown", default=str(REPO / "docs" / "performance.md"))
    args = p.parse_args(argv)
    results, md = Path(args.results), Path(args.markdown)

    import predict
    import startup
    import strategies

    strat = results / "strategies.json"
    if strat.is_file():
        strategies.main(["--from-json", str(strat), "--json", str(strat), "--markdown", str(md)])
    predicts = {}
    for path in sorted(results.glob("predict*.json")):
        predict.main(["--from-json", str(path), "--markdown", str(md)])
        predicts[rel(path)] = json.loads(path.read_text())
    if (results / "startup.json").is_file():
        startup.main(["--from-json", str(results / "startup.json"), "--markdown", str(md)])
    write_section(
        md,
        PRECISION_SECTION,
        precision_markdown(_load(strat), predicts, _load(results / "quality-precision.json")),
    )


if __name__ == "__main__":
    main()
