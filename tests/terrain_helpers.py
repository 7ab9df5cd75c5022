"""Offline layers for the class tests: a reference-water COG, a DEM with a valley and a steep wall,
and STAC collections (`jrc-gsw`, `cop-dem-glo-30`) added to the fetch tests' static catalog, whose
post-event items then carry their acquisition geometry (incidence angle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tests.fetch_helpers import RASTER_LONLAT

INCIDENCE = 36.5


def write_raster(path: Path, data: np.ndarray, crs: str, transform: tuple[float, ...], nodata: float | None,
                 driver: str = "GTiff") -> Path:  # fmt: skip
    import rasterio
    from rasterio.transform import Affine

    profile = {"driver": driver, "height": data.shape[0], "width": data.shape[1], "count": 1,
               "dtype": str(data.dtype), "crs": crs, "transform": Affine(*transform),
               "nodata": nodata}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data[None])
    return path


def valley_dem(h: int, w: int, pixel: float, wall_from: int) -> np.ndarray:
    """Elevation (m): a gentle V valley along the middle column, a 60° wall rising east of `wall_from`."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dem = 100.0 + 0.03 * pixel * np.abs(xx - w / 2) + 0.01 * pixel * yy
    east = xx > wall_from
    dem[east] += np.tan(np.radians(60.0)) * pixel * (xx[east] - wall_from)
    return dem.astype(np.float32)


def lonlat_grid(n_lon: int = 140, n_lat: int = 120) -> tuple[tuple[float, ...], float, float]:
    """A geographic grid over the catalog's rasters: (transform, lon step, lat step)."""
    w, s, e, n = RASTER_LONLAT
    dx, dy = (e - w) / n_lon, (n - s) / n_lat
    return (dx, 0.0, w, 0.0, -dy, n), dx, dy


def add_layers(catalog_json: Path, reference_north_of: float = 45.0045, incidence: float = INCIDENCE) -> None:
    """Add jrc-gsw (occurrence 100 north of a latitude, 10 elsewhere) and cop-dem-glo-30 (a
    valley and an east-facing 60° wall in lon/lat) to the catalog; post items get an incidence."""
    import pystac
    from pyproj import Transformer

    root = catalog_json.parent.parent
    cat = pystac.Catalog.from_file(str(catalog_json))
    transform, dx, dy = lonlat_grid()
    h, w = 120, 140
    lat = RASTER_LONLAT[3] - (np.arange(h) + 0.5) * dy
    occurrence = np.where(lat[:, None] >= reference_north_of, 100, 10).repeat(w, axis=1).astype(np.uint8)
    ref = write_raster(root / "data" / "jrc_occurrence.tif", occurrence, "EPSG:4326", transform, 255, "COG")
    # DEM in metres along the columns: ~ 2.75 m per column of 0.00025 deg at 45 N
    lon0 = RASTER_LONLAT[0]
    to_m = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    x_m, _ = to_m.transform(lon0 + (np.arange(w) + 0.5) * dx, np.full(w, 45.005))
    pixel = float(np.mean(np.diff(x_m)))
    dem = valley_dem(h, w, pixel, wall_from=75)  # inside the bbox (columns 40-88)
    dem_path = write_raster(root / "data" / "dem.tif", dem, "EPSG:4326", transform, -9999.0, "COG")
    bbox = list(RASTER_LONLAT)
    w_, s_, e_, n_ = bbox
    geom = {"type": "Polygon", "coordinates": [[[w_, s_], [e_, s_], [e_, n_], [w_, n_], [w_, s_]]]}
    import datetime as dt

    for cid, asset, path in (("jrc-gsw", "occurrence", ref), ("cop-dem-glo-30", "data", dem_path)):
        when = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
        coll = pystac.Collection(id=cid, description=cid, extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[when, when]])))  # fmt: skip
        item = pystac.Item(id=f"{cid}-tile", geometry=geom, bbox=bbox, datetime=when, properties={})
        item.add_asset(asset, pystac.Asset(href=str(path), media_type=pystac.MediaType.COG))
        coll.add_item(item)
        cat.add_child(coll)
    for item in cat.get_items(recursive=True):
        if "post" in item.id:
            item.properties["view:incidence_angle"] = incidence
    cat.normalize_hrefs(str(catalog_json.parent))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
