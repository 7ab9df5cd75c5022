"""`floodlora map`: from an area and a date to a flood map, in one command for responders.

fetch (Sentinel-1 pre/post scenes from a STAC catalog) -> predict (the run's model, threshold and
normalisation) -> polygons -> a quicklook PNG (post-event VV backscatter, the flood in blue, a
scale bar) -> ``summary.json`` (flooded km2, the scenes used, the model and its sha256, the threshold).

    OUT/scenes/pre.tif, post.tif, fetch.json   what `floodlora fetch` writes
    OUT/flood.tif                              uint8 COG mask: 0 dry, 1 flood, 255 nodata
    OUT/flood.gpkg                             flood polygons with area_km2 (or --polygons NAME)
    OUT/quicklook.png, OUT/summary.json
    OUT/index.html, OUT/lib/                   offline web map (inference/viewer.py)
    OUT/item.json                              STAC Item: every output an asset (inference/stac_out.py)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError

SUMMARY_JSON = "summary.json"
QUICKLOOK = "quicklook.png"


@dataclass
class MapResult:
    out_dir: Path
    summary: dict[str, Any]
    messages: list[str]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_views(run_dir: Path, orbit_state: str | None) -> dict[str, str]:
    """Which of the run's views receive the fetched pre / post scene (`pre` or `pre_asc` / `pre_desc`)."""
    from floodlora.config import load_config

    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--model {run_dir}: not a floodlora run directory (config.yaml is missing)")
    views = load_config(run_dir / "config.yaml").data.views
    suffix = {"ascending": "_asc", "descending": "_desc"}.get(orbit_state or "", "")
    out = {}
    for when in ("pre", "post"):
        for name in (when, f"{when}{suffix}" if suffix else None):
            if name and name in views:
                out[when] = name
                break
    if "post" not in out:
        raise ConfigError(f"--model {run_dir}: its views {', '.join(views)} have no post-event view")
    return out


def draw_quicklook(post_tif: Path, mask_tif: Path, out_png: Path, title: str) -> None:
    """Post-event VV (2-98 % stretch), flood pixels in blue, a scale bar; written atomically."""
    import rasterio
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from floodlora.io import atomic_path

    with rasterio.open(post_tif) as ds:
        vv = ds.read(1)
        pixel_m = abs(ds.transform.a) * (ds.crs.linear_units_factor[1] if ds.crs.is_projected else 111_320.0)
    with rasterio.open(mask_tif) as ds:
        mask = ds.read(1)
    finite = np.isfinite(vv)
    lo, hi = np.percentile(vv[finite], [2, 98]) if finite.any() else (0.0, 1.0)
    grey = np.clip((np.where(finite, vv, lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    flood = mask == 1
    rgb[flood] = 0.35 * rgb[flood] + 0.65 * np.array([0.1, 0.45, 1.0])
    h, w = vv.shape
    fig = Figure(figsize=(6, 6 * h / max(w, 1) + 0.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    width_m = w * pixel_m
    nice = [10**e * m for e in range(0, 7) for m in (1, 2, 5)]
    bar_m = max([n for n in nice if n <= width_m / 4] or [nice[0]])
    bar_px = bar_m / pixel_m
    x0, y0 = w * 0.05, h * 0.93
    ax.add_patch(_rect(x0 - w * 0.02, y0 - h * 0.06, bar_px + w * 0.04, h * 0.09))
    ax.plot([x0, x0 + bar_px], [y0, y0], color="black", linewidth=3)
    label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    ax.text(x0 + bar_px / 2, y0 - h * 0.015, label, ha="center", va="bottom", fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")


def _rect(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor="white", alpha=0.8, edgecolor="none")


def run_map(
    bbox: str,
    date: str,
    out: str | Path,
    model: str | None,
    *,
    catalog: str | None = None,
    collection: str | None = None,
    pre_days: int = 60,
    threshold: float | None = None,
    polygons: str = "flood.gpkg",
    simplify: float | None = None,
    min_area: float | None = None,
    progress: bool = True,
) -> MapResult:
    """fetch + predict + polygons + quicklook + summary.json under `out`."""
    from floodlora.data.fetch import DEFAULT_COLLECTION, PLANETARY_COMPUTER, format_fetch, run_fetch
    from floodlora.inference.predict import PredictOptions, predict_run
    from floodlora.io import atomic_write_json

    if model is None:
        raise ConfigError("--model RUN is needed: a run directory from `floodlora train` or `export --merge`")
    run_dir = Path(model)
    out_dir = Path(out)
    fetched = run_fetch(
        bbox, date, out_dir / "scenes", pre_days, catalog or PLANETARY_COMPUTER,
        collection or DEFAULT_COLLECTION, progress=progress,
    )  # fmt: skip
    views = model_views(run_dir, fetched.info["post"]["orbit_state"])
    paths = {views[k]: str(getattr(fetched, k)) for k in ("pre", "post") if k in views}
    opts = PredictOptions(
        threshold=threshold, units="db", date=fetched.info["post"]["datetime"][:19], progress=progress,
        simplify_m=simplify, min_area_m2=min_area,
    )  # fmt: skip
    res = predict_run(run_dir, paths, out_dir / "flood.tif", polygons=out_dir / polygons, options=opts)
    post = fetched.info["post"]
    title = (
        f"flood {fetched.info['date']}: Sentinel-1 {post['datetime'][:16]}Z, "
        f"{res.polygon_km2:.2f} km2 (threshold {opts.threshold:.2f})"
    )
    draw_quicklook(fetched.post, out_dir / "flood.tif", out_dir / QUICKLOOK, title)
    weights = run_dir / "weights.safetensors"
    base = run_dir / "base.json"
    import json

    summary = {
        "bbox": fetched.info["bbox"],
        "date": fetched.info["date"],
        "flooded_km2": res.polygon_km2,
        "flooded_km2_pixels": res.flooded_km2,
        "polygons": res.polygon_count,
        "valid_fraction": res.valid_pixels / max(res.height * res.width, 1),
        "threshold": opts.threshold,
        "model": {
            "run": str(run_dir.resolve()),
            "sha256": file_sha256(weights) if weights.is_file() else None,
            "base": json.loads(base.read_text()) if base.is_file() else None,
            "views": paths and sorted(paths),
            "missing_views": res.missing_views,
        },
        "scenes": {
            k: {
                "datetime": fetched.info[k]["datetime"],
                "relative_orbit": fetched.info[k]["relative_orbit"],
                "orbit_state": fetched.info[k]["orbit_state"],
                "items": [i["id"] for i in fetched.info[k]["items"]],
            }
            for k in ("pre", "post")
        },
        "catalog": fetched.info["catalog"],
        "collection": fetched.info["collection"],
        "crs": fetched.info["crs"],
        "files": {
            "pre": "scenes/pre.tif",
            "post": "scenes/post.tif",
            "fetch": "scenes/fetch.json",
            "mask": "flood.tif",
            "polygons": polygons,
            "quicklook": QUICKLOOK,
        },
    }
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    from floodlora.inference.publish import publish_map

    summary = publish_map(out_dir, summary)  # index.html + item.json from summary['files']
    messages = [*format_fetch(fetched).splitlines(), *(f"note: {m}" for m in res.messages)]
    return MapResult(out_dir, summary, messages)


def format_map(result: MapResult) -> str:
    s = result.summary
    lines = [m for m in result.messages if not m.startswith("wrote ")]
    lines.append(
        f"flooded: {s['flooded_km2']:.3f} km2 in {s['polygons']} polygons (threshold {s['threshold']:.2f}, "
        f"{100 * s['valid_fraction']:.1f}% of the bbox valid)"
    )
    lines.append(f"wrote {result.out_dir}: " + ", ".join(s["files"].values()) + f", {SUMMARY_JSON}")
    return "\n".join(lines)
