"""A local static STAC catalog of Sentinel-1 RTC-like COGs, written by pystac, for offline fetch tests.

Around the bbox (15.0-15.012 E, 45.0-45.009 N, UTM 33N): items of several dates and both pass
directions, the post-event pass split into two slices (north and south) that only together cover
the bbox, and nodata (0) borders outside each item's footprint. Every item has its own constant
linear power so the tests can tell which item a pixel came from: VV = c, VH = c / 5.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BBOX = (15.0, 45.0, 15.012, 45.009)
DATE = dt.date(2024, 10, 30)
UTM = "EPSG:32633"
RASTER_LONLAT = (14.99, 44.99, 15.025, 45.02)  # extent of every raster (nodata outside the footprint)


@dataclass
class FakeItem:
    id: str
    when: dt.datetime
    orbit: int
    state: str
    c: float  # linear VV power; VH = c / 5
    lat_range: tuple[float, float]  # the footprint (valid data) in latitude, full raster longitude


def _utc(days: int, hour: int = 5, minute: int = 10, second: int = 0) -> dt.datetime:
    base = dt.datetime.combine(DATE, dt.time(), tzinfo=dt.UTC)
    return base + dt.timedelta(days=days, hours=hour, minutes=minute, seconds=second)


FULL = (44.99, 45.02)
ITEMS = [
    FakeItem("S1A_desc117_pre_old", _utc(-24), 117, "descending", 0.04, FULL),
    FakeItem("S1A_desc117_pre", _utc(-12), 117, "descending", 0.05, FULL),
    FakeItem("S1A_asc117_other_direction", _utc(-5, 17), 117, "ascending", 0.09, FULL),
    FakeItem("S1A_desc44_other_orbit", _utc(-6), 44, "descending", 0.07, FULL),
    FakeItem("S1A_desc117_too_close", _utc(-1, 7), 117, "descending", 0.06, FULL),
    FakeItem("S1A_asc44_partial", _utc(1, 17), 44, "ascending", 0.08, (44.99, 45.004)),
    FakeItem("S1A_desc117_post_north", _utc(2), 117, "descending", 0.02, (45.0045, 45.02)),
    FakeItem("S1A_desc117_post_south", _utc(2, second=25), 117, "descending", 0.03, (44.99, 45.0055)),
]


def _water(lat: np.ndarray, lon: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A lake (dark, -22 dB VV) in the south-west of the bbox over speckled land (-8 dB): the
    lake mask and a multiplicative speckle field, for scenes that hold water."""
    lake = ((lat - 45.003) / 0.0025) ** 2 + ((lon - 15.004) / 0.0035) ** 2 < 1.0
    speckle = np.random.default_rng(seed).gamma(4.0, 0.25, size=lat.shape)
    return lake, speckle


def _write_cog(path: Path, item: FakeItem, band_scale: float, water: bool = False) -> None:
    import rasterio
    from pyproj import Transformer
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    x0, y0, x1, y1 = transform_bounds("EPSG:4326", UTM, *RASTER_LONLAT)
    res = 10.0
    x0, y1 = x0 + 3.0, y1 - 3.0  # not on the output grid: fetch has to resample
    w, h = int((x1 - x0) / res), int((y1 - y0) / res)
    transform = from_origin(x0, y1, res, res)
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = x0 + cols * res, y1 - rows * res
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(xs, ys)
    valid = (lat >= item.lat_range[0]) & (lat <= item.lat_range[1])
    value = np.full(lat.shape, item.c * band_scale)
    if water:
        lake, speckle = _water(lat, lon, seed=len(item.id) + int(band_scale * 10))
        after = "post" in item.id  # the lake is new: only post-event scenes hold it
        value = np.where(lake & after, 10**-2.2, 10**-0.8) * band_scale * speckle
    data = np.where(valid, value, 0.0).astype(np.float32)[None]
    profile = {"driver": "COG", "width": w, "height": h, "count": 1, "dtype": "float32", "crs": UTM,
               "transform": transform, "nodata": 0.0, "blocksize": 128}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def make_catalog(root: Path, href_base: str | None = None, water: bool = False) -> Path:
    """Write the COGs and a self-contained STAC catalog under `root`; returns catalog.json.

    `href_base` (e.g. an http URL) replaces the assets' local paths, to test remote reads. With
    `water`, scenes are speckled land and the post-event ones hold a new lake (:func:`lake_mask`).
    """
    import pystac

    root.mkdir(parents=True, exist_ok=True)
    start, end = ITEMS[0].when, ITEMS[-1].when
    collection = pystac.Collection(
        id="sentinel-1-rtc",
        description="test RTC scenes",
        extent=pystac.Extent(
            pystac.SpatialExtent([list(RASTER_LONLAT)]), pystac.TemporalExtent([[start, end]])
        ),
    )
    for item in ITEMS:
        w, _, e, _ = RASTER_LONLAT
        s, n = item.lat_range
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
        st = pystac.Item(
            id=item.id,
            geometry=geometry,
            bbox=[w, s, e, n],
            datetime=item.when,
            properties={
                "platform": "sentinel-1a",
                "sat:relative_orbit": item.orbit,
                "sat:orbit_state": item.state,
            },
        )
        for band, scale in (("vv", 1.0), ("vh", 0.2)):
            path = root / "data" / f"{item.id}_{band}.tif"
            path.parent.mkdir(exist_ok=True)
            _write_cog(path, item, scale, water)
            href = f"{href_base}/{path.name}" if href_base else str(path)
            st.add_asset(band, pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"]))
        collection.add_item(st)
    catalog = pystac.Catalog(id="test-catalog", description="offline Sentinel-1 test catalog")
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "stac" / "catalog.json"


def lake_mask(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Where the lake of ``make_catalog(water=True)`` is, at these coordinates (degrees)."""
    return _water(lat, lon, 0)[0]
