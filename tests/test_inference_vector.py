"""Flood polygons: every format read back through GDAL/OGR (pyogrio), layer, CRS, count, area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")

from pyproj import CRS, Geod, Transformer  # noqa: E402
from tests.inference_helpers import db_scene, make_run, write_scene  # noqa: E402

from floodlora.errors import DataError  # noqa: E402
from floodlora.inference.vector import atomic_vector_path, write_polygons  # noqa: E402

GEOD = Geod(ellps="WGS84")
GRIDS = {
    "utm": ("EPSG:32633", (10.0, 0.0, 520000.0, 0.0, -10.0, 5000000.0)),
    "lonlat": ("EPSG:4326", (0.0001, 0.0, 12.0, 0.0, -0.0001, 45.0)),
}
FORMATS = {"gpkg": "flood", "geojson": "flood", "fgb": "flood", "shp": "f"}  # extension -> layer name


def _mask() -> np.ndarray:
    """A ring with an island, a square, a one-pixel speck, a diagonal pair (2 polygons) and nodata."""
    h, w = 90, 110
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (yy - 35) ** 2 + (xx - 40) ** 2
    flood = (r2 < 22**2) & ~(r2 < 6**2)
    flood[60:70, 75:85] = True
    flood[80, 5] = True
    flood[5, 100] = flood[6, 101] = True
    mask = flood.astype(np.uint8)
    mask[:, 105:] = 255
    return mask


def _write_mask(path: Path, mask: np.ndarray, crs: str, transform: tuple[float, ...]) -> Path:
    import rasterio
    from rasterio.transform import Affine

    profile = {"driver": "GTiff", "height": mask.shape[0], "width": mask.shape[1], "count": 1,
               "dtype": "uint8", "nodata": 255, "crs": crs, "transform": Affine(*transform)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(mask[None])
    return path


def _pixel_area_m2(mask: np.ndarray, crs: str, t: tuple[float, ...]) -> float:
    """Flooded pixels x pixel area: planar for a projected grid, ellipsoidal per row for lon/lat."""
    flooded = mask == 1
    if CRS.from_user_input(crs).is_projected:
        return float(flooded.sum()) * abs(t[0] * t[4])
    total = 0.0
    for r, n in enumerate(flooded.sum(axis=1)):
        lat0, lat1 = t[5] + t[4] * r, t[5] + t[4] * (r + 1)
        lons = [t[2], t[2] + t[0], t[2] + t[0], t[2]]
        area, _ = GEOD.polygon_area_perimeter(lons, [lat1, lat1, lat0, lat0])
        total += abs(area) * int(n)
    return total


def _geodesic_area_m2(geoms: np.ndarray, crs: CRS) -> float:
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lonlat = shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    return float(sum(abs(GEOD.geometry_area_perimeter(g)[0]) for g in lonlat))


def _components(mask: np.ndarray) -> int:
    from skimage.measure import label

    return int(label(mask == 1, connectivity=1).max())


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_every_format_reads_back_through_ogr(tmp_path: Path, ext: str, grid: str) -> None:
    crs, transform = GRIDS[grid]
    mask = _mask()
    src = _write_mask(tmp_path / "mask.tif", mask, crs, transform)
    out = tmp_path / f"f.{ext}"
    with atomic_vector_path(out) as tmp:
        summary = write_polygons(src, tmp, target=out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left

    info = pyogrio.read_info(out, force_feature_count=True)
    assert [row[0] for row in pyogrio.list_layers(out)] == [FORMATS[ext]] == [summary.layer]
    want_crs = CRS.from_epsg(4326) if ext == "geojson" else CRS.from_user_input(crs)
    assert CRS.from_user_input(info["crs"]) == want_crs
    assert info["geometry_type"] == "Polygon" and list(info["fields"]) == ["area_km2"]
    n = _components(mask)
    assert n == 5 and info["features"] == summary.count == n

    _, _, wkb, fields = pyogrio.raw.read(out)
    geoms = shapely.from_wkb(wkb)
    expected_m2 = _pixel_area_m2(mask, crs, transform)
    assert _geodesic_area_m2(geoms, want_crs) == pytest.approx(expected_m2, rel=5e-3)
    assert fields[0].sum() * 1e6 == pytest.approx(expected_m2, rel=5e-3)
    assert summary.area_km2 == pytest.approx(fields[0].sum(), rel=1e-6)
    assert sum(len(g.interiors) for g in geoms) == 1  # the ring keeps its hole
    if ext == "geojson":
        lon0, lat0 = Transformer.from_crs(crs, 4326, always_xy=True).transform(transform[2], transform[5])
        x0, y0, _, y1 = shapely.total_bounds(geoms)
        assert 0 < x0 - lon0 < 0.02 and 0 < lat0 - y1 < 0.02 and y0 < y1  # lon/lat, whatever the raster CRS


def test_simplify_and_min_area(tmp_path: Path) -> None:
    crs, transform = GRIDS["utm"]
    mask = _mask()
    src = _write_mask(tmp_path / "mask.tif", mask, crs, transform)
    plain = write_polygons(src, tmp_path / "a.gpkg")
    # the speck (100 m2) and the two diagonal pixels go below 150 m2; a one-pixel tolerance smooths stairs
    small = write_polygons(src, tmp_path / "b.gpkg", simplify_m=10.0, min_area_m2=150.0)
    assert plain.count == 5 and small.count == 2 and small.dropped == 3
    _, _, wkb_a, _ = pyogrio.raw.read(tmp_path / "a.gpkg")
    _, _, wkb_b, fields = pyogrio.raw.read(tmp_path / "b.gpkg")
    vertices = [int(shapely.get_num_coordinates(shapely.from_wkb(w)).sum()) for w in (wkb_a, wkb_b)]
    assert vertices[1] < vertices[0] / 2
    assert fields[0].sum() == pytest.approx(plain.area_km2 - 3 * 100 / 1e6, rel=0.05)


def test_empty_mask_and_bad_extension(tmp_path: Path) -> None:
    crs, transform = GRIDS["utm"]
    src = _write_mask(tmp_path / "mask.tif", np.zeros((20, 20), np.uint8), crs, transform)
    summary = write_polygons(src, tmp_path / "e.gpkg")
    assert summary.count == 0 and summary.area_km2 == 0.0
    assert pyogrio.read_info(tmp_path / "e.gpkg")["features"] == 0
    with pytest.raises(DataError, match=r"\.gpkg, \.geojson, \.fgb or \.shp, not \.kml"):
        write_polygons(src, tmp_path / "e.kml")


def test_cli_predict_simplify_and_min_area(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from floodlora import cli

    torch.manual_seed(0)
    run = make_run(tmp_path / "run", views=("post",))
    post = write_scene(tmp_path / "post.tif", db_scene(48, 56, seed=2))
    base = ["predict", str(run), "--view", f"post={post}", "--no-progress", "--threshold", "0.01"]
    ok = CliRunner().invoke(cli.app, [*base, "--out", str(tmp_path / "a.tif"), "--polygons",
                                      str(tmp_path / "a.shp"), "--simplify", "10"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    n = pyogrio.read_info(tmp_path / "a.shp")["features"]
    assert n >= 1 and f"{n} polygons" in ok.output
    none = CliRunner().invoke(cli.app, [*base, "--out", str(tmp_path / "b.tif"), "--polygons",
                                        str(tmp_path / "b.fgb"), "--min-area", "1e12"])  # fmt: skip
    assert none.exit_code == 0, none.output
    assert f"{n} polygon(s) below the minimum area" in none.output and "0 polygons" in none.output
    assert pyogrio.read_info(tmp_path / "b.fgb", force_feature_count=True)["features"] == 0
