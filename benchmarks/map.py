"""Throughput a responder can plan with: a Sentinel-1 IW swath through `predict` (the step of `map`
that costs), and many areas on a 2-worker Dask LocalCluster against one process.

    python benchmarks/map.py                 # swath-wide strip 25,000 x 1,024 px + 4 areas (minutes)
    python benchmarks/map.py --rows 4096     # a taller measured part (a quarter of a swath: 4,250)
    python benchmarks/map.py --tiny          # 3,000 x 256 strip, test-micro areas (seconds)

Swath: a full IW swath is about 25,000 x 17,000 px (10 m). The benchmark measures a strip of the
swath's full width and `--rows` rows (a synthetic dB scene tiled to that width) with the embedded
encoder under the `cpu-small` recipe (an untrained model: its speed is the trained one's), in its
own process for its own peak RSS, at the precision `auto` picks; the swath time is that time scaled
by 17,000 / rows (prediction is linear in rows) and is written as an extrapolation. `predict`
holds one strip of tile rows, so its peak RSS follows the width, not the height.

Areas: 4 areas of the offline test catalog (tests/fetch_helpers.py), mapped by `run_map` one
after another in one process, then by `map --areas` on a 2-worker LocalCluster. The JSON records
per-area time and the cluster's fixed cost, and from them how the wall time falls with more workers.

Writes benchmarks/results/map.json (or --json).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, machine_info, peak_rss_kib

DEFAULT_JSON = REPO / "benchmarks/results/map.json"
SWATH = (25_000, 17_000)  # width, height in px of a Sentinel-1 IW swath at 10 m


def _strip(work: Path, width: int, rows: int, seed: int = 0) -> Path:
    """pre.tif / post.tif: a synthetic dB scene tiled to `width` x `rows`, on a UTM grid."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from floodlora.data.synthetic import generate_scene

    base = min(1024, rows)
    sample = generate_scene(base, "in", seed=seed, nodata_edge_prob=0.0)
    scene = work / "scene"
    scene.mkdir(parents=True, exist_ok=True)
    for view in ("pre", "post"):
        bands = np.stack([sample.views[view][b] for b in ("vv", "vh")]).astype(np.float32)
        reps = (1, math.ceil(rows / base), math.ceil(width / base))
        data = np.tile(bands, reps)[:, :rows, :width]
        profile = {"driver": "GTiff", "height": rows, "width": width, "count": 2, "dtype": "float32",
                   "crs": "EPSG:32633", "transform": from_origin(300000.0, 5100000.0, 10.0, 10.0),
                   "nodata": float("nan"), "tiled": True, "compress": "deflate"}  # fmt: skip
        with rasterio.open(scene / f"{view}.tif", "w", **profile) as ds:
            ds.write(data)
            ds.descriptions = ("VV", "VH")
    return scene


def _run(work: Path, checkpoint: str) -> Path:
    """An untrained run of the cpu-small recipe on `checkpoint` (what `map --model` would load)."""
    from floodlora.config import load_config
    from floodlora.models.factory import build_segmentor
    from floodlora.runs import save_run

    cfg = load_config("cpu-small")
    cfg.model.checkpoint = checkpoint
    if checkpoint.startswith("random:"):
        cfg.data.crop_size = 32
    model = build_segmentor(cfg.model, list(cfg.data.views), list(cfg.data.bands))
    save_run(work / "run", cfg, model)
    return work / "run"


def swath_worker(run: str, scene: str, out: str) -> dict[str, Any]:
    """`predict` of the strip with the run's own settings (as `map` runs it): time, RSS, precision."""
    from floodlora.inference.predict import PredictOptions, predict_run

    views = {"pre": str(Path(scene) / "pre.tif"), "post": str(Path(scene) / "post.tif")}
    t0 = time.perf_counter()
    res = predict_run(run, views, Path(out) / "flood.tif", options=PredictOptions(precision="auto"))
    wall = time.perf_counter() - t0
    km2 = res.height * res.width * 100 / 1e6
    return {"wall_s": round(wall, 2), "height": res.height, "width": res.width, "km2": round(km2, 2),
            "km2_per_s": round(km2 / wall, 2), "peak_rss_mb": round(peak_rss_kib() / 1024, 1),
            "precision": str(res.precision), "tile": res.tile, "overlap": res.overlap,
            "timings_s": {k: round(v, 2) for k, v in res.timings.items()}}  # fmt: skip


def measure_swath(work: Path, run: Path, rows: int, width: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    scene = _strip(work, width, rows)
    prep = time.perf_counter() - t0
    (work / "swath").mkdir(exist_ok=True)
    me = str(Path(__file__).resolve())
    cmd = [sys.executable, me, "--swath-worker", str(run), str(scene), str(work / "swath")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"swath worker failed:\n{proc.stderr[-3000:]}")
    part = json.loads(proc.stdout.strip().splitlines()[-1])
    scale = SWATH[1] / rows * SWATH[0] / width
    swath_s = part["wall_s"] * scale
    return {
        "measured_part": {**part, "scene_prepare_s": round(prep, 1)},
        "swath_px": list(SWATH),
        "swath_km2": SWATH[0] * SWATH[1] * 100 / 1e6,
        "extrapolated": True,
        "extrapolation": f"measured {width} x {rows} px; swath time = measured time x {scale:.3f} (linear in "
        "pixels); peak RSS of the measured part (predict holds one strip of tile rows: it follows the "
        "width, which the part shares with the swath)",
        "swath_s": round(swath_s, 1),
        "swath_min": round(swath_s / 60, 2),
        "swath_peak_rss_mb": part["peak_rss_mb"],
        "target_min": 10.0,
        "target_rss_gb": 4.0,
        "meets_time_target": swath_s <= 600,
        "meets_rss_target": part["peak_rss_mb"] <= 4096,
    }


def _areas_file(work: Path) -> tuple[Path, list[tuple[str, tuple[float, float, float, float]]]]:
    sys.path.insert(0, str(REPO))
    from tests.fetch_helpers import DATE

    w, s, e, n = 14.995, 44.995, 15.021, 45.015  # inside every item of the test catalog
    mx, my = (w + e) / 2, (s + n) / 2
    areas = [("sw", (w, s, mx, my)), ("se", (mx, s, e, my)), ("nw", (w, my, mx, n)), ("ne", (mx, my, e, n))]
    path = work / "areas.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "bbox", "date"])
        writer.writerows([(i, ",".join(map(str, b)), DATE.isoformat()) for i, b in areas])
    return path, areas


def sequential_worker(areas_csv: str, out: str, options: str) -> dict[str, Any]:
    """The 4 areas by `run_map`, one after another, in this one process (torch's default threads)."""
    import torch

    from floodlora.inference.areas import read_areas
    from floodlora.inference.mapping import run_map

    opts = json.loads(options)
    model = opts.pop("model", None)
    per_area = {}
    t0 = time.perf_counter()
    for a in read_areas(areas_csv):
        t = time.perf_counter()
        run_map(",".join(map(repr, a.bbox)), a.date, Path(out) / a.folder, model, progress=False, **opts)
        per_area[a.folder] = round(time.perf_counter() - t, 2)
    return {"wall_s": round(time.perf_counter() - t0, 2), "per_area_s": per_area,
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def measure_areas(work: Path, run: Path, workers: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests.fetch_helpers import make_catalog

    from floodlora.inference.areas import run_areas

    catalog = make_catalog(work / "catalog")
    areas_csv, areas = _areas_file(work)
    options = {"model": str(run), "catalog": str(catalog)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sequential-worker", str(areas_csv),
           str(work / "sequential"), json.dumps(options)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"sequential worker failed:\n{proc.stderr[-3000:]}")
    one = json.loads(proc.stdout.strip().splitlines()[-1])
    t0 = time.perf_counter()
    res = run_areas(areas_csv, work / "dask", workers=workers, **options)
    dask_wall = time.perf_counter() - t0
    failed = [r for r in res.rows if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"areas failed: {failed}")
    task_s = [float(r["seconds"]) for r in res.rows]
    mean_task = sum(task_s) / len(task_s)
    busy = math.ceil(len(task_s) / workers) * mean_task
    overhead = max(0.0, dask_wall - busy)
    mean_seq = sum(one["per_area_s"].values()) / len(one["per_area_s"])

    def model(n_areas: int, m: int) -> float:
        return round(overhead + math.ceil(n_areas / m) * mean_task, 1)

    return {
        "areas": len(areas),
        "area_px": "about 100 x 110 px each (the offline catalog's extent split in four)",
        "one_process": one,
        "one_process_mean_area_s": round(mean_seq, 2),
        "local_cluster": {
            "workers": res.workers,
            "scheduler": res.scheduler,
            "wall_s": round(dask_wall, 2),
            "task_s": {r["folder"]: round(float(r["seconds"]), 2) for r in res.rows},
            "mean_task_s": round(mean_task, 2),
            "fixed_cost_s": round(overhead, 2),
        },
        "cluster_over_one_process": round(dask_wall / one["wall_s"], 3),
        "target": "2-worker LocalCluster no slower than one process over 4 areas (within 10 %)",
        "meets_target": dask_wall <= 1.10 * one["wall_s"],
        "scaling_model": "wall = fixed cost + ceil(areas / workers) x mean task time (both measured above)",
        "predicted_wall_s": {
            f"{n} areas": {f"{m} workers": model(n, m) for m in (1, 2, 4, 8, 16)} for n in (4, 100)
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1024, help="rows of the swath-wide strip that is measured")
    p.add_argument("--width", type=int, default=SWATH[0], help="strip width (default: a swath's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="seconds: 3000 x 256 strip, test-micro encoder")
    p.add_argument("--skip-swath", action="store_true")
    p.add_argument("--skip-areas", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--swath-worker", nargs=3, default=None, help=argparse.SUPPRESS)
    p.add_argument("--sequential-worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.swath_worker:
        print(json.dumps(swath_worker(*args.swath_worker)))
        return None
    if args.sequential_worker:
        print(json.dumps(sequential_worker(*args.sequential_worker)))
        return None
    checkpoint = "random:test-micro" if args.tiny else "embedded"
    rows, width = (256, 3000) if args.tiny else (args.rows, args.width)
    result: dict[str, Any] = {
        "benchmark": "map",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": "tiny" if args.tiny else "full",
        "model": f"cpu-small recipe on {checkpoint} (untrained weights; speed as trained)",
        "machine": machine_info(),
    }
    with tempfile.TemporaryDirectory(prefix="floodlora-map-bench-") as tmp:
        work = Path(tmp)
        run = _run(work, checkpoint)
        if not args.skip_swath:
            result["swath"] = measure_swath(work, run, rows, width)
            print(json.dumps(result["swath"], indent=1), flush=True)
        if not args.skip_areas:
            result["areas"] = measure_areas(work, run, args.workers)
            print(json.dumps(result["areas"], indent=1), flush=True)
    tiny_json = Path(tempfile.gettempdir()) / "map-tiny.json"
    out = Path(args.json) if args.json else (tiny_json if args.tiny else DEFAULT_JSON)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
