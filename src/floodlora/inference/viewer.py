"""``index.html``: a web map of a `map` folder that opens from disk, with no network and no Python.

Why: a responder forwards a folder (or a zip) to people who only have a browser. The page shows the
post-event backscatter and the map's classes as image overlays, the flood polygons with their km2,
a legend with km2 per class and a scale bar, on a plain background. Leaflet (BSD-2, vendored in
``floodlora/assets/leaflet``) is copied into ``OUT/lib/leaflet``; the overlays (PNG, warped to Web
Mercator and reduced to at most :data:`MAX_OVERLAY_PX` on a side) and the data (``viewer/data.js``:
a script, because browsers refuse ``fetch`` of ``file://`` URLs) lie beside the page. Nothing is
loaded from elsewhere unless the user asks for a basemap: ``index.html?tiles=URL`` with an XYZ
template such as ``https://tile.openstreetmap.org/{z}/{x}/{y}.png``.

    OUT/index.html
    OUT/lib/leaflet/{leaflet.js, leaflet.css, images/, LICENSE}
    OUT/viewer/{post.png, classes.png, data.js}
"""

from __future__ import annotations

import html
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.inference.legend import CLASS_LABELS, CLASS_RGBA, class_km2

VIEWER_HTML = "index.html"
VIEWER_DIR = "viewer"
LIB_DIR = "lib/leaflet"
MAX_OVERLAY_PX = 2048
MAX_POLYGONS = 5000  # the largest ones; the legend says when some were left out
_CLASS_KEYS = ("classes", "class", "mask")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<link rel="stylesheet" href="lib/leaflet/leaflet.css">
<style>
  html, body, #map { height: 100%; margin: 0; }
  #map { background: #eceae4; }
  .fl-box { background: rgba(255,255,255,0.92); padding: 6px 9px; font: 12px/1.4 sans-serif;
            border-radius: 4px; box-shadow: 0 1px 4px rgba(0,0,0,0.3); max-width: 320px; }
  .fl-box h1 { font-size: 13px; margin: 0 0 3px 0; }
  .fl-swatch { display: inline-block; width: 12px; height: 12px; margin-right: 5px;
               vertical-align: -2px; border: 1px solid #555; }
  .fl-pixelated { image-rendering: pixelated; }
</style>
</head>
<body>
<div id="map"></div>
<script src="lib/leaflet/leaflet.js"></script>
<script src="viewer/data.js"></script>
<script>
(function () {
  "use strict";
  var D = window.FLOODLORA;
  var map = L.map("map", {zoomSnap: 0, attributionControl: false, preferCanvas: true});
  var tiles = new URLSearchParams(window.location.search).get("tiles");
  if (tiles) { L.tileLayer(tiles, {maxZoom: 22}).addTo(map); }
  var layers = {};
  D.overlays.forEach(function (o) {
    layers[o.name] = L.imageOverlay(o.href, o.bounds,
      {opacity: o.opacity, className: o.pixelated ? "fl-pixelated" : ""}).addTo(map);
  });
  var polygons = L.geoJSON(D.polygons, {
    style: {color: "#002a80", weight: 1.2, fill: false},
    onEachFeature: function (f, layer) {
      var text = f.properties.area_km2.toFixed(3) + " km\\u00b2";
      layer.bindTooltip(text, {sticky: true});
      layer.bindPopup("flood polygon: " + text);
    }
  }).addTo(map);
  layers["flood polygons (km\\u00b2 on hover)"] = polygons;
  L.control.layers(null, layers, {collapsed: false, position: "topright"}).addTo(map);
  L.control.scale({metric: true, imperial: false, maxWidth: 160}).addTo(map);
  function box(position, html) {
    var c = L.control({position: position});
    c.onAdd = function () {
      var div = L.DomUtil.create("div", "fl-box");
      div.innerHTML = html;
      L.DomEvent.disableClickPropagation(div);
      return div;
    };
    c.addTo(map);
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (ch) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[ch];
    });
  }
  box("topleft", "<h1>" + esc(D.title) + "</h1>" + D.facts.map(esc).join("<br>"));
  box("bottomright", "<b>Legend</b><br>" + D.legend.map(function (e) {
    var swatch = e.fill ? '<span class="fl-swatch" style="background:' + e.fill + '"></span>'
      : '<span class="fl-swatch" style="background:none;border:2px solid ' + e.stroke + '"></span>';
    return swatch + esc(e.label) + (e.km2 === null ? "" : ": " + e.km2.toFixed(3) + " km\\u00b2");
  }).join("<br>") + (D.note ? "<br><i>" + esc(D.note) + "</i>" : ""));
  map.fitBounds(D.bounds);
  window.FLOODLORA_READY = true;
})();
</script>
</body>
</html>
"""


def _mercator_grid(ds: Any, max_px: int) -> tuple[Any, int, int]:
    """A Web Mercator grid over the dataset, at most `max_px` on a side."""
    from rasterio.warp import calculate_default_transform

    t, w, h = calculate_default_transform(ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds)
    scale = max(w, h) / max_px
    if scale > 1:
        w, h = max(1, math.ceil(w / scale)), max(1, math.ceil(h / scale))
        t, w, h = calculate_default_transform(
            ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds, dst_width=w, dst_height=h
        )
    return t, w, h


def _lonlat_bounds(t: Any, w: int, h: int) -> list[list[float]]:
    """Leaflet bounds [[south, west], [north, east]] of a Web Mercator grid."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    west, north = to_ll.transform(t.c, t.f)
    east, south = to_ll.transform(t.c + t.a * w, t.f + t.e * h)
    return [[south, west], [north, east]]


def _warp_band(path: Path, t: Any, w: int, h: int, resampling: str) -> np.ndarray:
    """Band 1 of `path` on the Web Mercator grid (NaN where there is no data)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with rasterio.open(path) as ds:
        nodata = ds.nodata
        with WarpedVRT(ds, crs="EPSG:3857", transform=t, width=w, height=h,
                       resampling=Resampling[resampling], src_nodata=nodata,
                       nodata=nodata if nodata is not None else 0) as vrt:  # fmt: skip
            data = vrt.read(1, masked=True)
    return np.ma.filled(data.astype(np.float32), np.nan)


def _save_png(path: Path, rgba: np.ndarray) -> None:
    from PIL import Image

    from floodlora.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG", optimize=False)


def _grey_rgba(values: np.ndarray) -> np.ndarray:
    """2-98 % stretch of valid pixels as opaque grey; nodata transparent."""
    finite = np.isfinite(values)
    lo, hi = np.percentile(values[finite], [2, 98]) if finite.any() else (0.0, 1.0)
    grey = (255 * np.clip((np.where(finite, values, lo) - lo) / max(hi - lo, 1e-6), 0, 1)).astype(np.uint8)
    return np.dstack([grey, grey, grey, np.where(finite, 255, 0).astype(np.uint8)])


def _class_rgba(values: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    for value, colour in CLASS_RGBA.items():
        rgba[values == value] = colour
    return rgba


def _polygons_geojson(path: Path, limit: int) -> tuple[dict[str, Any], int]:
    """Flood polygons in WGS 84 as GeoJSON (the `limit` largest) and how many were left out."""
    import pyogrio
    import shapely
    from pyproj import CRS, Transformer

    meta, _, wkb, fields = pyogrio.raw.read(path)
    names = list(meta["fields"])
    areas = np.asarray(fields[names.index("area_km2")], dtype=float) if "area_km2" in names else None
    geoms = shapely.from_wkb(wkb)
    order = np.argsort(-areas) if areas is not None else np.arange(len(geoms))
    keep = order[:limit]
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else CRS.from_epsg(4326)
    if not crs.equals(CRS.from_epsg(4326)):
        to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    features = []
    for i in keep:
        geometry = json.loads(shapely.to_geojson(shapely.set_precision(geoms[i], 1e-7)))
        area = float(areas[i]) if areas is not None else float("nan")
        features.append({"type": "Feature", "properties": {"area_km2": round(area, 6)}, "geometry": geometry})
    return {"type": "FeatureCollection", "features": features}, len(geoms) - len(keep)


def _facts(summary: Mapping[str, Any]) -> list[str]:
    facts = []
    if summary.get("flooded_km2") is not None:
        count = summary.get("polygons", "?")
        facts.append(f"flooded: {summary['flooded_km2']:.3f} km\u00b2 in {count} polygons")
    scenes = summary.get("scenes") or {}
    for when in ("pre", "post"):
        if isinstance(scenes.get(when), Mapping) and scenes[when].get("datetime"):
            facts.append(f"{when}-event Sentinel-1: {scenes[when]['datetime'][:16]}Z")
    if summary.get("threshold") is not None:
        facts.append(f"threshold: {summary['threshold']:.2f}")
    model = summary.get("model")
    if isinstance(model, Mapping) and model.get("run"):
        facts.append(f"model: {Path(str(model['run'])).name}")
    return facts


def copy_leaflet(out_dir: Path) -> Path:
    """Copy the vendored Leaflet beside the page (replacing an older copy)."""
    from importlib import resources

    source = resources.files("floodlora") / "assets" / "leaflet"
    target = out_dir / LIB_DIR
    with resources.as_file(source) as src:
        shutil.copytree(src, target, dirs_exist_ok=True)
    return target


def write_viewer(out_dir: str | Path, summary: Mapping[str, Any], max_px: int = MAX_OVERLAY_PX) -> Path:
    """Write ``OUT/index.html`` + ``OUT/viewer/`` + ``OUT/lib/leaflet`` from the files in the summary."""
    import rasterio

    from floodlora.io import atomic_write_text

    out_dir = Path(out_dir)
    files: Mapping[str, str] = summary.get("files", {})
    key = next((k for k in _CLASS_KEYS if k in files), None)
    if key is None:
        raise ValueError(f"{out_dir}: the summary lists no map raster ({' / '.join(_CLASS_KEYS)})")
    class_path = out_dir / files[key]
    (out_dir / VIEWER_DIR).mkdir(parents=True, exist_ok=True)
    with rasterio.open(class_path) as ds:
        t, w, h = _mercator_grid(ds, max_px)
    bounds = _lonlat_bounds(t, w, h)
    overlays = []
    if "post" in files and (out_dir / files["post"]).is_file():
        _save_png(out_dir / VIEWER_DIR / "post.png", _grey_rgba(_warp_band(out_dir / files["post"], t, w, h,
                                                                            "average")))  # fmt: skip
        overlays.append({"id": "post", "name": "post-event VV backscatter", "href": f"{VIEWER_DIR}/post.png",
                         "bounds": bounds, "opacity": 1.0, "pixelated": False})  # fmt: skip
    classes = _warp_band(class_path, t, w, h, "nearest")
    _save_png(out_dir / VIEWER_DIR / "classes.png", _class_rgba(np.nan_to_num(classes, nan=255).astype(int)))
    overlays.append({"id": "classes", "name": "flood map classes", "href": f"{VIEWER_DIR}/classes.png",
                     "bounds": bounds, "opacity": 1.0, "pixelated": True})  # fmt: skip
    km2 = class_km2(class_path)
    legend = [
        {"fill": "#{:02x}{:02x}{:02x}".format(*CLASS_RGBA[v][:3]), "label": CLASS_LABELS[v],
         "km2": km2.get(name)}
        for v, name in ((1, "flood"), (2, "reference_water"), (3, "excluded"))
        if v == 1 or name in km2
    ]  # fmt: skip
    polygons: dict[str, Any] = {"type": "FeatureCollection", "features": []}
    note = ""
    if "polygons" in files and (out_dir / files["polygons"]).is_file():
        polygons, left_out = _polygons_geojson(out_dir / files["polygons"], MAX_POLYGONS)
        legend.append({"fill": None, "stroke": "#002a80", "label": "flood polygon", "km2": None})
        if left_out:
            note = f"{left_out} smaller polygons are not drawn (all are in {files['polygons']})"
    data = {
        "title": f"Flood map {summary.get('date', '')}",
        "facts": _facts(summary),
        "bounds": bounds,
        "overlays": overlays,
        "polygons": polygons,
        "legend": legend,
        "note": note,
    }
    atomic_write_text(out_dir / VIEWER_DIR / "data.js", "window.FLOODLORA = " + json.dumps(data) + ";\n")
    copy_leaflet(out_dir)
    page = _PAGE.replace("__TITLE__", html.escape(f"Flood map {summary.get('date', '')}"))
    atomic_write_text(out_dir / VIEWER_HTML, page)
    return out_dir / VIEWER_HTML
