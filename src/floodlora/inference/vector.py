"""Flood polygons from a mask GeoTIFF, written by GDAL/OGR so GIS tools read them as they read any file.

Polygons come from ``rasterio.features.shapes`` (GDAL's polygoniser) as shapely 2 geometries; they are
written with pyogrio, the format following the extension: GeoPackage (``.gpkg``), GeoJSON
(``.geojson`` / ``.json``, RFC 7946: WGS 84 longitude/latitude), FlatGeobuf (``.fgb``) or Shapefile
(``.shp`` + sidecars). Every format but GeoJSON keeps the raster's CRS. The layer is ``flood`` (a
Shapefile's layer is its file name) with one attribute, ``area_km2``.

Areas are true ground areas: each polygon is projected with pyproj to a Lambert azimuthal
equal-area projection on the WGS 84 ellipsoid centred on the scene, where planar area is ellipsoidal
area. Simplification (``simplify_m``) and the minimum area (``min_area_m2``) work in metres there too,
whatever the raster CRS.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError, DataError

LAYER = "flood"
# extension -> (short name, OGR driver)
VECTOR_FORMATS: dict[str, tuple[str, str]] = {
    ".gpkg": ("gpkg", "GPKG"),
    ".geojson": ("geojson", "GeoJSON"),
    ".json": ("geojson", "GeoJSON"),
    ".fgb": ("fgb", "FlatGeobuf"),
    ".shp": ("shp", "ESRI Shapefile"),
}


@dataclass
class PolygonSummary:
    """What :func:`write_polygons` wrote: where, how, how many polygons and their total area."""

    path: Path
    format: str
    count: int
    area_km2: float
    layer: str
    crs: str
    dropped: int = 0  # polygons below min_area_m2 (or emptied by simplification)


def vector_format(path: str | Path) -> str:
    """Short format name from the file extension; anything unsupported is a user error."""
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_FORMATS:
        raise DataError(
            f"{path}: polygons are written as .gpkg, .geojson, .fgb or .shp, not {suffix or 'no extension'}"
        )
    return VECTOR_FORMATS[suffix][0]


def layer_name(path: str | Path) -> str:
    """The layer name GIS tools will show: ``flood``, or the file name for a Shapefile."""
    return Path(path).stem if vector_format(path) == "shp" else LAYER


@contextmanager
def atomic_vector_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path with the same file name; move it (and sidecars) over `path` on success.

    OGR picks the driver and a Shapefile's layer name from the file name, and a Shapefile is several
    files, so the temporary file lives in a hidden folder beside the target rather than under a
    temporary name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp_dir / target.name
        for f in sorted(tmp_dir.iterdir()):
            os.replace(f, target.parent / f.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def equal_area_crs(lon: float, lat: float) -> Any:
    """Lambert azimuthal equal-area on the WGS 84 ellipsoid centred on (lon, lat), in metres."""
    from pyproj import CRS

    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +datum=WGS84 +units=m +no_defs")


def reproject(geoms: np.ndarray, src: Any, dst: Any) -> np.ndarray:
    """Shapely geometries from CRS `src` to `dst` (vectorised over all coordinates)."""
    import shapely
    from pyproj import CRS, Transformer

    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return geoms
    tr = Transformer.from_crs(src, dst, always_xy=True)

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, fn)


def mask_polygons(mask_path: str | Path, value: int = 1) -> tuple[np.ndarray, Any, tuple[float, float]]:
    """(shapely Polygons of the pixels equal to `value` in the mask CRS, that CRS, scene centre lon/lat).

    GDAL polygonises the band row by row from the file (4-connected regions, holes kept).
    """
    import rasterio
    import shapely.geometry
    from pyproj import CRS, Transformer
    from rasterio.features import shapes

    with rasterio.open(mask_path) as ds:
        if ds.crs is None:
            raise DataError(f"{mask_path}: the scene has no CRS, so flood polygons cannot be georeferenced")
        crs = CRS.from_wkt(ds.crs.to_wkt())
        x, y = ds.xy(ds.height / 2, ds.width / 2)
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        geoms = [
            shapely.geometry.shape(g)
            for g, v in shapes(rasterio.band(ds, 1), transform=ds.transform, connectivity=4)
            if int(v) == value
        ]
    return np.array(geoms, dtype=object), crs, (float(lon), float(lat))


def prepare_polygons(
    geoms: np.ndarray,
    crs: Any,
    center_lonlat: tuple[float, float],
    simplify_m: float | None = None,
    min_area_m2: float | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Simplify (tolerance in metres), measure on the ellipsoid and drop specks.

    Returns (geometries in `crs`, area in m2 per geometry, number dropped).
    """
    import shapely

    if simplify_m is not None and simplify_m < 0:
        raise ConfigError(f"--simplify must be >= 0 metres, got {simplify_m}")
    if min_area_m2 is not None and min_area_m2 < 0:
        raise ConfigError(f"--min-area must be >= 0 m2, got {min_area_m2}")
    ea = equal_area_crs(*center_lonlat)
    projected = reproject(geoms, crs, ea)
    if simplify_m:
        projected = shapely.simplify(projected, simplify_m, preserve_topology=True)
        geoms = reproject(projected, ea, crs)
    areas = np.asarray(shapely.area(projected), dtype=np.float64)
    keep = ~shapely.is_empty(geoms) & (areas > 0)
    if min_area_m2:
        keep &= areas >= min_area_m2
    return geoms[keep], areas[keep], int((~keep).sum())


def write_polygons(
    mask_path: str | Path,
    out: str | Path,
    target: str | Path | None = None,
    *,
    simplify_m: float | None = None,
    min_area_m2: float | None = None,
) -> PolygonSummary:
    """Polygonise the flooded pixels of `mask_path` into `out` (format from the extension), with area_km2.

    `target` is the final name (for messages) when `out` is a temporary file of the same name.
    """
    import pyogrio.raw
    import shapely
    from pyproj import CRS

    fmt = vector_format(target or out)
    driver = VECTOR_FORMATS[Path(target or out).suffix.lower()][1]
    geoms, crs, center = mask_polygons(mask_path)
    geoms, areas_m2, dropped = prepare_polygons(geoms, crs, center, simplify_m, min_area_m2)
    layer_options: dict[str, str] = {}
    out_crs = crs
    if fmt == "geojson":
        out_crs = CRS.from_epsg(4326)
        geoms = reproject(geoms, crs, out_crs)
        layer_options["RFC7946"] = "YES"
    if fmt == "fgb":
        layer_options["SPATIAL_INDEX"] = "YES"
    area_km2 = (areas_m2 / 1e6).astype(np.float64)
    pyogrio.raw.write(
        str(out),
        shapely.to_wkb(geoms),
        field_data=[area_km2],
        fields=["area_km2"],
        layer=LAYER,
        driver=driver,
        geometry_type="Polygon",
        crs=out_crs.to_wkt(),
        layer_options=layer_options or None,
    )
    name = layer_name(target or out)
    epsg = out_crs.to_epsg()
    return PolygonSummary(
        path=Path(target or out),
        format=fmt,
        count=len(geoms),
        area_km2=float(area_km2.sum()),
        layer=name,
        crs=f"EPSG:{epsg}" if epsg else out_crs.to_wkt(),
        dropped=dropped,
    )
