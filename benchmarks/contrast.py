"""How dark water is against land in each labelled event, in each source's own units.

    python benchmarks/contrast.py                # every labelled event under ../shared/data/real
    python benchmarks/contrast.py --from-json    # regenerate the docs section from the JSON only

A model that learns water from one set of events can only find it in another where water looks
alike after normalisation. This measures it without any model: per event and band, the median of
water and of land pixels in the post-event image, and their difference in units of the event's
upper spread (p84 - p50 of all pixels, which water does not widen: it sits below the median). A
value of -7 means water far below land; 0 or above means water no darker than land (frozen,
wind-roughened or vegetated water, or labels drawn from other imagery). Beside it, the ceiling of
any global threshold on the event: the one threshold per band (VV, VH, their mean) that maximises
F1 on every labelled chip of the event, fitted on those very labels. A model or target above that
ceiling needs more than a threshold's brightness rule. Results go to
``benchmarks/results/contrast.json``; the section of ``docs/quality.md`` between the markers is
generated from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
SECTION_BEGIN = "<!-- benchmarks/contrast.py: begin -->"
SECTION_END = "<!-- benchmarks/contrast.py: end -->"
#: Chips read per event (evenly spaced in discovery order) and the pixel stride within a chip.
MAX_CHIPS = 40
STRIDE = 3


def event_contrast(refs: list[Any]) -> dict[str, Any]:
    """Water / land medians and their separation per band of one event's post-event view."""
    from floodlora.data.sources import read_sample

    step = max(1, len(refs) // MAX_CHIPS)
    chosen = refs[::step]
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    water: dict[str, list[np.ndarray]] = defaultdict(list)
    for ref in chosen:
        sample = read_sample(ref)
        post = sample.views.get("post")
        if post is None:
            continue
        usable = sample.valid & (sample.mask != 255)
        for band, arr in post.items():
            x = arr[usable][::STRIDE]
            keep = np.isfinite(x)
            values[band].append(x[keep])
            water[band].append((sample.mask[usable][::STRIDE] == 1)[keep])
    bands: dict[str, Any] = {}
    fraction = None
    for band in sorted(values):
        x, y = np.concatenate(values[band]), np.concatenate(water[band])
        p50, p84 = np.percentile(x, [50, 84])
        spread = max(float(p84 - p50), 1e-6)
        land = float(np.median(x[~y])) if (~y).any() else None
        wet = float(np.median(x[y])) if y.any() else None
        bands[band] = {
            "land_median": land,
            "water_median": wet,
            "upper_spread": spread,
            "separation": None if land is None or wet is None else (wet - land) / spread,
        }
        fraction = float(y.mean())
    return {
        "event": chosen[0].event,
        "format": chosen[0].format,
        "units": chosen[0].units,
        "label_kind": chosen[0].label_kind,
        "n_chips": len(refs),
        "n_read": len(chosen),
        "water_fraction": fraction,
        "bands": bands,
    }


def threshold_ceiling(refs: list[Any]) -> dict[str, Any]:
    """Per band (``vv``, ``vh``, ``both``: their mean) the best F1 of one threshold over every
    labelled chip of the event, fitted on those labels (the rule of the benchmark's fitted row)."""
    from floodlora.analysis.baselines import read_samples, run_baseline

    samples = read_samples(refs)
    present = set(samples[0].views["post"]) if samples else set()
    bands = [b for b in ("vv", "vh") if b in present] + (["both"] if {"vv", "vh"} <= present else [])
    out: dict[str, Any] = {}
    for band in bands:
        r = run_baseline("otsu", samples, band=band, mode="fitted", train=samples, per_chip=False)
        scores = {k: r[k] for k in ("f1", "precision", "recall")}
        out[band] = {"threshold": r["baseline"]["threshold_value"], **scores}
    return out


def measure(real: Path) -> dict[str, Any]:
    from floodlora.data.sources import discover

    by_event: dict[str, list[Any]] = defaultdict(list)
    for ref in discover(real):
        if ref.labelled:
            by_event[ref.event].append(ref)
    t0 = time.perf_counter()
    events = [
        {**event_contrast(refs), "threshold_ceiling": threshold_ceiling(refs)}
        for _, refs in sorted(by_event.items())
    ]
    return {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/contrast.py",
        "max_chips": MAX_CHIPS,
        "stride": STRIDE,
        "events": events,
        "wall_seconds": time.perf_counter() - t0,
    }


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        SECTION_BEGIN,
        "",
        "### Water against land, per event (no model)",
        "",
        f"Command: `{result['command']}` ({result['created']}). Post-event view, at most "
        f"{result['max_chips']} chips per event. Per band: land median, water median (in the "
        "source's own units: dB or 8-bit), and the separation (water - land) / (p84 - p50 of all "
        "pixels). Negative: water darker than land. Then the ceiling of a global threshold: per band, "
        "the F1 in % of the one threshold that is best on every labelled chip of the event (fitted "
        "on those labels; VV+VH is the mean of the two bands in the source's units).",
        "",
        "| Event | Units | Labels | Water fraction "
        "| VV land / water / separation | VH land / water / separation "
        "| Best one threshold F1: VV / VH / VV+VH |",
        "|---|---|---|---|---|---|---|",
    ]
    for ev in result["events"]:
        cells = [ev["event"], ev["units"], ev["label_kind"], _num(ev["water_fraction"], ".2f")]
        for band in ("vv", "vh"):
            b = ev["bands"].get(band)
            cells.append(
                "–"
                if b is None
                else f"{_num(b['land_median'])} / {_num(b['water_median'])} / **{_num(b['separation'])}**"
            )
        ceiling = ev.get("threshold_ceiling", {})
        cells.append(
            " / ".join(_num(100 * ceiling[b]["f1"]) if b in ceiling else "–" for b in ("vv", "vh", "both"))
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Raw numbers: `benchmarks/results/contrast.json`.", "", SECTION_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", default=str(REAL), help="the real chips (default ../shared/data/real)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "contrast.json"))
    p.add_argument("--markdown", default=str(REPO / "docs" / "quality.md"), help="doc to update")
    p.add_argument("--from-json", action="store_true", help="only regenerate the doc from the JSON")
    args = p.parse_args(argv)
    from floodlora.io import atomic_write_json, replace_marked_section

    json_path = Path(args.json)
    if args.from_json:
        result = json.loads(json_path.read_text())
    else:
        if not Path(args.real).is_dir():
            raise SystemExit(f"{args.real}: real data folder not found (pass --real)")
        result = measure(Path(args.real))
        atomic_write_json(json_path, result)
    replace_marked_section(args.markdown, SECTION_BEGIN, SECTION_END, markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
