"""The classes a flood map raster holds, their colours, and the km2 each covers.

Why one place: the web viewer's legend, the many-areas km2 table and the STAC metadata must name
and count the classes the same way. The mask `map` writes today holds 0 / 1 / 255; a class raster
adds 2 (reference water, present before the event) and 3 (excluded: shadow, layover, steep or high
ground). Values not listed here are counted under ``class_<value>`` rather than dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_NAMES: dict[int, str] = {0: "dry", 1: "flood", 2: "reference_water", 3: "excluded", 255: "nodata"}
# RGBA on the web map; dry and nodata stay transparent so the post-event image shows through.
CLASS_RGBA: dict[int, tuple[int, int, int, int]] = {
    1: (26, 115, 255, 210),
    2: (0, 30, 110, 190),
    3: (150, 150, 150, 150),
}
CLASS_LABELS: dict[int, str] = {
    0: "dry",
    1: "flood (new water)",
    2: "reference water",
    3: "excluded",
    255: "nodata",
}


def class_name(value: int) -> str:
    return CLASS_NAMES.get(int(value), f"class_{int(value)}")


def pixel_area_km2(ds: object, rows: slice | None = None) -> np.ndarray:
    """Area of one pixel per row (km2) on the raster's grid.

    Projected grids: the grid area (a UTM grid's scale factor, < 0.5 %, is not corrected; the
    polygons' ``area_km2`` is ellipsoidal). Geographic grids: the spherical area of each row.
    """
    crs, t, height = ds.crs, ds.transform, ds.height  # type: ignore[attr-defined]
    rows = rows or slice(0, height)
    n = rows.stop - rows.start
    if crs is not None and crs.is_projected:
        unit = crs.linear_units_factor[1]
        return np.full(n, abs(t.a * t.e) * unit * unit / 1e6)
    lat = np.radians(t.f + t.e * (np.arange(rows.start, rows.stop) + 0.5))
    r_km = 6371.0088
    return np.abs(np.radians(t.a) * np.radians(t.e)) * r_km * r_km * np.cos(lat)


def class_km2(path: str | Path, strip_rows: int = 1024) -> dict[str, float]:
    """km2 per class of a uint8 map raster, read in strips of rows (memory bounded for a swath).

    Every map class (dry, flood, reference water, excluded) is listed, 0 where absent, so that the
    tables of many areas share their columns; no data is listed where present.
    """
    import rasterio
    from rasterio.windows import Window

    totals: dict[int, float] = {v: 0.0 for v in CLASS_NAMES if v != 255}
    with rasterio.open(path) as ds:
        for r0 in range(0, ds.height, strip_rows):
            r1 = min(r0 + strip_rows, ds.height)
            block = ds.read(1, window=Window(0, r0, ds.width, r1 - r0))
            area = pixel_area_km2(ds, slice(r0, r1))
            for value in np.unique(block):
                per_row = (block == value).sum(axis=1)
                totals[int(value)] = totals.get(int(value), 0.0) + float((per_row * area).sum())
    return {class_name(v): totals[v] for v in sorted(totals)}
