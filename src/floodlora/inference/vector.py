"""Flood polygons from a mask GeoTIFF: area in km2, written as GeoPackage or GeoJSON.

No vector library is required. Polygons come from ``rasterio.features.shapes`` read straight from
the mask file (GDAL polygonises line by line, so the scene is never loaded whole). The GeoPackage is
written with the standard library's sqlite3 following the OGC GeoPackage 1.2 encoding (a "GP"
header + little-endian WKB), in the raster's CRS, so QGIS opens it as it opens any .gpkg. GeoJSON
follows RFC 7946: coordinates are reprojected to WGS 84 longitude/latitude.

Area: in the raster CRS when it is projected (scaled by its linear unit); for a geographic CRS each
polygon is reprojected to a Lambert azimuthal equal-area projection centred on the scene.
"""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floodlora.errors import DataError

Geometry = dict[str, Any]
VECTOR_FORMATS = {".gpkg": "gpkg", ".geojson": "geojson", ".json": "geojson"}
LAYER = "flood"
EARTH_AUTHALIC_RADIUS_M = 6371007.2


@dataclass
class PolygonSummary:
    path: Path
    format: str
    count: int
    area_km2: float


def vector_format(path: str | Path) -> str:
    """'gpkg' or 'geojson' from the file extension; anything else is a user error."""
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_FORMATS:
        raise DataError(f"{path}: polygons are written as .gpkg or .geojson, not {suffix or 'no extension'}")
    return VECTOR_FORMATS[suffix]


def ring_area(ring: Iterable[Iterable[float]]) -> float:
    """Signed shoelace area of a closed ring in its coordinate units (counter-clockwise positive)."""
    pts = [tuple(p)[:2] for p in ring]
    s = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        s += x0 * y1 - x1 * y0
    return 0.5 * s


def planar_area(geom: Geometry) -> float:
    """Area of a Polygon or MultiPolygon (exterior minus holes) in squared coordinate units."""
    polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
    total = 0.0
    for rings in polys:
        total += abs(ring_area(rings[0])) - sum(abs(ring_area(r)) for r in rings[1:])
    return total


class AreaCalculator:
    """Polygon area in km2 in `crs` (projected: directly; geographic: via an equal-area projection)."""

    def __init__(self, crs: Any, center_lonlat: tuple[float, float] | None = None) -> None:
        from rasterio.crs import CRS

        self.crs = CRS.from_user_input(crs)
        self.equal_area = None
        if self.crs.is_projected:
            _, factor = self.crs.linear_units_factor
            self.scale = float(factor) ** 2 / 1e6
        else:
            lon, lat = center_lonlat or (0.0, 0.0)
            self.equal_area = CRS.from_proj4(
                f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +datum=WGS84 +units=m +no_defs"
            )
            self.scale = 1e-6

    def __call__(self, geom: Geometry) -> float:
        if self.equal_area is not None:
            from rasterio.warp import transform_geom

            geom = transform_geom(self.crs, self.equal_area, geom)
        return planar_area(geom) * self.scale


def flood_polygons(mask_path: str | Path, value: int = 1) -> Iterator[Geometry]:
    """Polygons of the pixels equal to `value`, in the mask's CRS, streamed from the file."""
    import rasterio
    from rasterio.features import shapes

    with rasterio.open(mask_path) as ds:
        for geom, v in shapes(rasterio.band(ds, 1), transform=ds.transform, connectivity=4):
            if int(v) == value:
                yield geom


def scene_center_lonlat(mask_path: str | Path) -> tuple[float, float] | None:
    import rasterio
    from rasterio.warp import transform

    with rasterio.open(mask_path) as ds:
        if ds.crs is None:
            return None
        x, y = ds.xy(ds.height / 2, ds.width / 2)
        xs, ys = transform(ds.crs, "EPSG:4326", [x], [y])
        return float(xs[0]), float(ys[0])


def write_polygons(
    mask_path: str | Path, out: str | Path, target: str | Path | None = None
) -> PolygonSummary:
    """Polygonise the flooded pixels of `mask_path` into `out` (.gpkg or .geojson) with area_km2.

    `target` is the final name (for messages) when `out` is a temporary file.
    """
    import rasterio

    fmt = vector_format(target or out)
    with rasterio.open(mask_path) as ds:
        crs = ds.crs
    if crs is None:
        raise DataError(f"{mask_path}: the scene has no CRS, so flood polygons cannot be georeferenced")
    area = AreaCalculator(crs, scene_center_lonlat(mask_path))
    features = ((g, area(g)) for g in flood_polygons(mask_path))
    if fmt == "gpkg":
        count, total = write_gpkg(out, features, crs)
    else:
        count, total = write_geojson(out, features, crs)
    return PolygonSummary(Path(target or out), fmt, count, total)


# --------------------------------------------------------------------------------------------------
# GeoJSON (RFC 7946: WGS 84 lon/lat)
# --------------------------------------------------------------------------------------------------


def write_geojson(
    path: str | Path, features: Iterable[tuple[Geometry, float]], crs: Any
) -> tuple[int, float]:
    """Stream features into a GeoJSON FeatureCollection in EPSG:4326; returns (count, total km2)."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    src = CRS.from_user_input(crs)
    wgs84 = CRS.from_epsg(4326)
    count, total = 0, 0.0
    with open(path, "w") as fh:
        fh.write('{"type": "FeatureCollection", "name": "flood", "features": [\n')
        for geom, area_km2 in features:
            g = geom if src == wgs84 else transform_geom(src, wgs84, geom)
            feature = {
                "type": "Feature",
                "id": count + 1,
                "properties": {"fid": count + 1, "area_km2": area_km2},
                "geometry": {"type": g["type"], "coordinates": g["coordinates"]},
            }
            fh.write(("," if count else "") + json.dumps(feature) + "\n")
            count += 1
            total += area_km2
        fh.write("]}\n")
    return count, total


# --------------------------------------------------------------------------------------------------
# GeoPackage (OGC 12-128r18), written with sqlite3
# --------------------------------------------------------------------------------------------------

_GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
_GPKG_USER_VERSION = 10200
_WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",'
    '0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]]'
)
_CUSTOM_SRS_ID = 100000

_SCHEMA = """
CREATE TABLE gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '', last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT uk_gc_table_name UNIQUE (table_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
"""


def _wkb_polygons(geom: Geometry) -> tuple[bytes, tuple[float, float, float, float]]:
    """Little-endian WKB for a Polygon/MultiPolygon and its envelope (minx, maxx, miny, maxy)."""
    xs: list[float] = []
    ys: list[float] = []

    def polygon(rings: list[Any]) -> bytes:
        parts = [struct.pack("<BII", 1, 3, len(rings))]
        for ring in rings:
            pts = [tuple(p)[:2] for p in ring]
            parts.append(struct.pack("<I", len(pts)))
            parts.append(b"".join(struct.pack("<dd", x, y) for x, y in pts))
            xs.extend(p[0] for p in pts)
            ys.extend(p[1] for p in pts)
        return b"".join(parts)

    if geom["type"] == "Polygon":
        wkb = polygon(geom["coordinates"])
    elif geom["type"] == "MultiPolygon":
        polys = geom["coordinates"]
        wkb = struct.pack("<BII", 1, 6, len(polys)) + b"".join(polygon(p) for p in polys)
    else:
        raise ValueError(f"unsupported geometry type {geom['type']}")
    return wkb, (min(xs), max(xs), min(ys), max(ys))


def gpkg_geometry(geom: Geometry, srs_id: int) -> tuple[bytes, tuple[float, float, float, float]]:
    """GeoPackage geometry blob: 'GP', version 0, flags (LE, xy envelope), srs_id, envelope, WKB."""
    wkb, env = _wkb_polygons(geom)
    header = b"GP" + struct.pack("<BBi", 0, 0b00000011, srs_id) + struct.pack("<4d", *env)
    return header + wkb, env


def _srs_row(crs: Any) -> tuple[str, int, str, int, str]:
    from rasterio.crs import CRS

    c = CRS.from_user_input(crs)
    epsg = c.to_epsg()
    name = c.to_dict().get("proj", "custom") if epsg is None else f"EPSG:{epsg}"
    wkt = c.to_wkt()
    if epsg is not None:
        return (name, epsg, "EPSG", epsg, wkt)
    return (f"floodlora {name}", _CUSTOM_SRS_ID, "NONE", _CUSTOM_SRS_ID, wkt)


def write_gpkg(
    path: str | Path, features: Iterable[tuple[Geometry, float]], crs: Any, layer: str = LAYER
) -> tuple[int, float]:
    """Write polygons with an `area_km2` attribute as one GeoPackage layer; returns (count, total km2)."""
    path = Path(path)
    if path.exists():
        path.unlink()  # a temp file from mkstemp: sqlite needs an empty database
    srs = _srs_row(crs)
    con = sqlite3.connect(str(path))
    try:
        con.execute(f"PRAGMA application_id = {_GPKG_APPLICATION_ID}")
        con.execute(f"PRAGMA user_version = {_GPKG_USER_VERSION}")
        con.executescript(_SCHEMA)
        rows = [
            ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian CRS"),
            ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic CRS"),
            ("WGS 84 geodetic", 4326, "EPSG", 4326, _WGS84_WKT, "longitude/latitude in decimal degrees"),
        ]
        if srs[1] not in (-1, 0, 4326):
            rows.append((*srs, "raster CRS of the flood map"))
        con.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.execute(
            f'CREATE TABLE "{layer}" (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
            "geom MULTIPOLYGON, area_km2 DOUBLE)"
        )
        count, total = 0, 0.0
        bounds = [math.inf, math.inf, -math.inf, -math.inf]
        for geom, area_km2 in features:
            multi = (
                geom
                if geom["type"] == "MultiPolygon"
                else {"type": "MultiPolygon", "coordinates": [geom["coordinates"]]}
            )
            blob, (x0, x1, y0, y1) = gpkg_geometry(multi, srs[1])
            con.execute(f'INSERT INTO "{layer}" (geom, area_km2) VALUES (?, ?)', (blob, area_km2))
            bounds = [min(bounds[0], x0), min(bounds[1], y0), max(bounds[2], x1), max(bounds[3], y1)]
            count += 1
            total += area_km2
        env = bounds if count else [None, None, None, None]
        con.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, min_x, min_y, "
            "max_x, max_y, srs_id) VALUES (?, 'features', ?, ?, ?, ?, ?, ?, ?)",
            (layer, layer, "flood extent polygons (floodlora)", *env, srs[1]),
        )
        con.execute(
            "INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'MULTIPOLYGON', ?, 0, 0)", (layer, srs[1])
        )
        con.commit()
    finally:
        con.close()
    return count, total


def read_gpkg(path: str | Path, layer: str = LAYER) -> list[tuple[Geometry, float]]:
    """Read back polygons written by :func:`write_gpkg` (for tests and quick checks)."""
    con = sqlite3.connect(str(path))
    try:
        rows = con.execute(f'SELECT geom, area_km2 FROM "{layer}" ORDER BY fid').fetchall()
    finally:
        con.close()
    return [(_parse_gpkg_geometry(blob), float(area)) for blob, area in rows]


def _parse_gpkg_geometry(blob: bytes) -> Geometry:
    if blob[:2] != b"GP":
        raise ValueError("not a GeoPackage geometry blob")
    flags = blob[3]
    env_len = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}[(flags >> 1) & 0b111]
    wkb = memoryview(blob)[8 + env_len :]
    off = 0

    def u32() -> int:
        nonlocal off
        v = struct.unpack_from("<I", wkb, off)[0]
        off += 4
        return v

    def polygon() -> list[list[tuple[float, float]]]:
        nonlocal off
        off += 5  # byte order + type
        rings = []
        for _ in range(u32()):
            n = u32()
            pts = [struct.unpack_from("<dd", wkb, off + 16 * i) for i in range(n)]
            off += 16 * n
            rings.append(pts)
        return rings

    off += 5
    n_polys = u32()
    return {"type": "MultiPolygon", "coordinates": [polygon() for _ in range(n_polys)]}
