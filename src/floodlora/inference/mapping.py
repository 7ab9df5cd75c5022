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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError
from floodlora.inference.classes import CLASSES_TIF, CONFIDENCE_TIF, MapLayers, map_class_options

SUMMARY_JSON = "summary.json"
LABEL_FREE_RUN = "model"  # OUT/model: the self-adapted run of a map made without --model

#: Makes a run from the fetched scenes (view -> GeoTIFF) into a folder, with no labels; returns it.
SceneAdapter = Callable[[dict[str, Path], Path, bool], Path]
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


def check_polygons_name(name: str) -> None:
    """`--polygons` is a bare file name: the polygons are always written inside OUT, never elsewhere."""
    from floodlora.inference.vector import vector_format

    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(
            f"--polygons {name!r}: give a bare file name (no path, not starting with '.'), "
            "e.g. flood.gpkg; the file is written as OUT/NAME"
        )
    vector_format(name)


def check_model(run_dir: Path) -> None:
    """The files a run needs (config, base, weights, a post-event view), checked without loading it."""
    from floodlora.runs import BASE_FILE, WEIGHTS_FILE, read_base

    if not run_dir.is_dir():
        raise ConfigError(f"--model {run_dir}: no such run directory")
    model_views(run_dir, None)
    if not (run_dir / BASE_FILE).is_file():
        raise ConfigError(f"--model {run_dir}: not a floodlora run directory ({BASE_FILE} is missing)")
    read_base(run_dir)
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise ConfigError(f"--model {run_dir}: {WEIGHTS_FILE} is missing")


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
    adapter: SceneAdapter | None = None,
    layers: MapLayers | None = None,
) -> MapResult:
    """fetch + predict + polygons + quicklook + summary.json under `out`.

    Without `model`, `adapter` makes one from the fetched scenes with no labels (the command line
    passes self-adaptation of the embedded encoder, written to ``OUT/model``). Where it finds no
    water (:class:`~floodlora.data.split_threshold.DrySceneError`) the map is dry, and says why.

    Every argument is checked before anything is fetched or written: a download takes minutes, and
    a typo found after it would leave a half-made OUT behind.
    """
    from floodlora.data.fetch import (
        DEFAULT_COLLECTION,
        PLANETARY_COMPUTER,
        fetch_options,
        fetch_scenes,
        format_fetch,
    )
    from floodlora.inference.predict import PredictOptions, check_predict_options, predict_run
    from floodlora.io import atomic_write_json

    check_polygons_name(polygons)
    fetch_opts = fetch_options(
        bbox, date, pre_days, catalog or PLANETARY_COMPUTER, collection or DEFAULT_COLLECTION,
        progress=progress,
    )  # fmt: skip
    opts = PredictOptions(
        threshold=threshold, units="db", progress=progress, simplify_m=simplify, min_area_m2=min_area
    )
    check_predict_options(opts)
    if model is None and adapter is None:
        raise ConfigError("--model RUN is needed: a run directory from `floodlora train` or `export --merge`")
    if model is not None:
        check_model(Path(model))
    out_dir = Path(out)
    fetched = fetch_scenes(fetch_opts, out_dir / "scenes")
    label_free: dict[str, Any] | None = None
    if model is None:
        from floodlora.data.split_threshold import DrySceneError

        scenes = {"post": fetched.post, **({"pre": fetched.pre} if fetched.pre else {})}
        try:
            model = str(adapter(scenes, out_dir / LABEL_FREE_RUN, progress))  # type: ignore[misc]
        except DrySceneError as err:
            return _dry_map(fetched, out_dir, polygons, str(err))
        label_free = _label_free_facts(Path(model))
    run_dir = Path(model)
    views = model_views(run_dir, fetched.info["post"]["orbit_state"])
    paths = {views[k]: str(getattr(fetched, k)) for k in ("pre", "post") if k in views}
    classes, class_notes = map_class_options(layers, fetched.info, catalog or PLANETARY_COMPUTER, out_dir)
    opts.date = fetched.info["post"]["datetime"][:19]
    opts.classes = classes
    res = predict_run(run_dir, paths, out_dir / "flood.tif", polygons=out_dir / polygons, options=opts)
    post = fetched.info["post"]
    title = (
        f"flood {fetched.info['date']}: Sentinel-1 {post['datetime'][:16]}Z, "
        f"{res.polygon_km2:.2f} km2 (threshold {opts.threshold:.2f})"
        + ("\nlabel-free: embedded encoder self-adapted to this scene" if label_free else "")
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
        "label_free": label_free is not None,
        "self_adaptation": label_free,
        **(res.classes or {}),
        "model": {
            "run": str(run_dir.resolve()),
            "sha256": file_sha256(weights) if weights.is_file() else None,
            "base": json.loads(base.read_text()) if base.is_file() else None,
            "views": paths and sorted(paths),
            "missing_views": res.missing_views,
        },
        **_scene_facts(fetched),
        "files": {
            **SCENE_FILES,
            "polygons": polygons,
            "quicklook": QUICKLOOK,
            "classes": CLASSES_TIF,
            "confidence": CONFIDENCE_TIF,
        },
    }
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    from floodlora.inference.publish import publish_map

    summary = publish_map(out_dir, summary)  # index.html + item.json from summary['files']
    messages = [*format_fetch(fetched).splitlines(), *(f"note: {m}" for m in class_notes + res.messages)]
    return MapResult(out_dir, summary, messages)


#: the files every map folder holds, relative to OUT
SCENE_FILES = {
    "pre": "scenes/pre.tif",
    "post": "scenes/post.tif",
    "fetch": "scenes/fetch.json",
    "mask": "flood.tif",
}


def _scene_facts(fetched: Any) -> dict[str, Any]:
    """summary.json's record of the fetched scenes: passes, catalog, collection, CRS."""
    return {
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
    }


def _label_free_facts(run_dir: Path) -> dict[str, Any]:
    """What summary.json says of a self-adapted model: where it is, what the teacher kept."""
    import json

    adapt = json.loads((run_dir / "adapt.json").read_text())
    events = adapt["teacher"]["events"]
    return {
        "run": LABEL_FREE_RUN,
        "labels_used": False,
        "teacher": {
            ev: {
                "kind": t["kind"],
                "thresholds": {b: f["threshold"] for b, f in t["bands"].items()},
                "tiles_kept": {b: f["tiles_kept"] for b, f in t["bands"].items()},
                "tiles_total": t["tiles_total"],
                "pseudo_labelled_fraction": t["pseudo_labelled_fraction"],
            }
            for ev, t in events.items()
        },
        "operating_point": adapt["operating_point"]["rule"],
        "wall_seconds": adapt["wall_seconds"],
    }


def _dry_map(fetched: Any, out_dir: Path, polygons: str, reason: str) -> MapResult:
    """The map of a scene in which the label-free teacher found no water: every valid pixel dry."""
    import rasterio

    from floodlora.io import atomic_path, atomic_write_json

    with rasterio.open(fetched.post) as ds:
        valid = np.ones((ds.height, ds.width), dtype=bool)
        for band in range(1, ds.count + 1):
            data = ds.read(band, masked=True)
            valid &= ~np.ma.getmaskarray(data) & np.isfinite(np.ma.getdata(data))
        profile = {
            "driver": "GTiff", "height": ds.height, "width": ds.width, "count": 1, "dtype": "uint8",
            "crs": ds.crs, "transform": ds.transform, "nodata": 255, "compress": "deflate",
        }  # fmt: skip
        pixel_km2 = abs(ds.transform.a * ds.transform.e) / 1e6 if ds.crs and ds.crs.is_projected else None
    mask = np.where(valid, 0, 255).astype(np.uint8)
    with atomic_path(out_dir / "flood.tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(mask, 1)
    title = f"flood {fetched.info['date']}: no water found (label-free)"
    draw_quicklook(fetched.post, out_dir / "flood.tif", out_dir / QUICKLOOK, title)
    summary = {
        "bbox": fetched.info["bbox"],
        "date": fetched.info["date"],
        "flooded_km2": 0.0,
        "flooded_km2_pixels": 0.0,
        "polygons": 0,
        "valid_fraction": float(valid.mean()),
        "pixel_km2": pixel_km2,
        "threshold": None,
        "label_free": True,
        "self_adaptation": {"run": None, "labels_used": False, "dry": reason},
        "model": None,
        **_scene_facts(fetched),
        "files": {**SCENE_FILES, "quicklook": QUICKLOOK},
    }
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    from floodlora.data.fetch import format_fetch
    from floodlora.inference.publish import publish_map

    summary = publish_map(out_dir, summary)  # index.html + item.json, as for any map
    return MapResult(out_dir, summary, [*format_fetch(fetched).splitlines(), f"note: dry scene: {reason}"])


def format_map(result: MapResult) -> str:
    s = result.summary
    lines = [m for m in result.messages if not m.startswith("wrote ")]
    if s.get("label_free"):
        lines.append(
            "label-free map: the embedded encoder self-adapted to these scenes"
            + (f" ({LABEL_FREE_RUN}/)" if s["self_adaptation"].get("run") else " (no water found)")
        )
    at = f"threshold {s['threshold']:.2f}, " if s["threshold"] is not None else ""
    lines.append(
        f"flooded: {s['flooded_km2']:.3f} km2 in {s['polygons']} polygons ({at}"
        f"{100 * s['valid_fraction']:.1f}% of the bbox valid)"
    )
    if s.get("classes_km2"):
        lines.append(
            "classes: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f} km2" for k, v in s["classes_km2"].items())
        )
    lines.append(f"wrote {result.out_dir}: " + ", ".join(s["files"].values()) + f", {SUMMARY_JSON}")
    return "\n".join(lines)
