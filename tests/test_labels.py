"""`floodlora labels`: polygons in other CRSs -> 1 / 0 / 255 exactly where expected, chips for adapt."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from floodlora.cli import app
from inference_helpers import UTM33, db_scene, write_scene

X0, Y0, RES = 500000.0, 5000000.0, 10.0
H, W = 96, 80


def _rect(r0: int, r1: int, c0: int, c1: int):  # rows r0..r1-1, cols c0..c1-1 of the scene grid
    import shapely

    return shapely.segmentize(shapely.box(X0 + c0 * RES, Y0 - r1 * RES, X0 + c1 * RES, Y0 - r0 * RES), RES)


def _write(path: Path, geoms: list, crs: str) -> Path:
    """Write polygons given in the scene's UTM grid to `path` in `crs` (pyogrio picks the driver)."""
    import pyogrio
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    moved = [shapely.geometry.shape(transform_geom(UTM33, crs, shapely.geometry.mapping(g))) for g in geoms]
    wkb = np.array(shapely.to_wkb(moved), dtype=object)
    ids = np.arange(len(moved), dtype=np.int32)
    pyogrio.raw.write(
        path, wkb, [ids], ["id"], geometry_type="Polygon", crs=CRS.from_user_input(crs).to_wkt()
    )
    return path


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    data = db_scene(H, W)
    data[:, 90:, :10] = np.nan  # no data in the bottom-left corner
    return write_scene(tmp_path / "post.tif", data)


def _expected() -> np.ndarray:
    exp = np.full((H, W), 255, np.uint8)
    exp[5:70, 10:70] = 0  # AOI
    exp[40:60, 0:30] = 0  # dry polygon (partly outside the AOI)
    exp[10:30, 20:50] = 1  # flood
    exp[85:95, 5:15] = 1  # flood polygon that reaches into the no-data corner
    exp[90:, :10] = 255
    return exp


def test_labels_rasterise_reprojected_polygons_exactly(scene: Path, tmp_path: Path) -> None:
    import rasterio

    flood = _write(tmp_path / "flood.gpkg", [_rect(10, 30, 20, 50), _rect(85, 95, 5, 15)], "EPSG:3857")
    dry = _write(tmp_path / "dry.geojson", [_rect(40, 60, 0, 30)], "EPSG:4326")
    aoi = _write(tmp_path / "aoi.fgb", [_rect(5, 70, 10, 70)], UTM33)
    out = tmp_path / "chips"
    res = CliRunner().invoke(
        app,
        ["labels", "--scene", str(scene), "--flood", str(flood), "--dry", str(dry), "--aoi", str(aoi),
         "--out", str(out), "--chip-size", "32"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "flood.gpkg: CRS EPSG:3857 differs from the scene's EPSG:32633; polygons reprojected" in res.output
    assert "dry.geojson: CRS EPSG:4326 differs" in res.output and "aoi.fgb: CRS" not in res.output

    got = np.full((H, W), 77, np.uint8)
    chips = sorted((out / "chips").iterdir())
    assert len(chips) == 9  # 3 x 3 tiles of 32 px; the last column shifted inwards to stay full size
    with rasterio.open(scene) as src:
        image = src.read()
    for chip in chips:
        with rasterio.open(chip / "mask.tif") as m, rasterio.open(chip / "post.tif") as p:
            assert m.crs == p.crs == rasterio.crs.CRS.from_string(UTM33) and m.shape == (32, 32)
            c0 = round((m.transform.c - X0) / RES)
            r0 = round((Y0 - m.transform.f) / RES)
            got[r0 : r0 + 32, c0 : c0 + 32] = m.read(1)
            np.testing.assert_array_equal(p.read(), image[:, r0 : r0 + 32, c0 : c0 + 32])
    np.testing.assert_array_equal(got, _expected())

    from floodlora.data.sources import discover, read_sample

    refs = discover([out])
    assert len(refs) == 9 and all(r.labelled for r in refs)
    sample = read_sample(refs[0])
    assert list(sample.views) == ["post"] and sorted(sample.views["post"]) == ["vh", "vv"]


def test_labels_flood_only_warns_no_dry_class(scene: Path, tmp_path: Path) -> None:
    from floodlora.data.labels import make_labels

    flood = _write(tmp_path / "flood.geojson", [_rect(10, 30, 20, 50)], "EPSG:4326")
    res = make_labels(scene, flood, tmp_path / "out", chip_size=32, min_labelled=0.2)
    assert any("no --dry or --aoi" in m for m in res.messages)
    assert res.flood_pixels == 20 * 30 and res.dry_pixels == 0
    assert len(res.chips) == 2  # only tiles where >= 20% of the pixels are labelled


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("outside", "none of its 1 polygons overlaps the scene"),
        ("nodata", "no flood pixel inside the scene's valid data (empty result)"),
        ("points", "no polygons (found Point)"),
        ("missing", "vector file not found"),
    ],
)
def test_labels_bad_inputs_are_one_line(
    case: str, message: str, scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    import pyogrio
    import shapely

    from floodlora import cli

    flood = tmp_path / "flood.gpkg"
    if case == "outside":
        _write(flood, [_rect(-500, -400, 0, 10)], "EPSG:4326")
    elif case == "nodata":
        _write(flood, [_rect(91, 95, 0, 9)], UTM33)
    elif case == "points":
        wkb = np.array(shapely.to_wkb([shapely.Point(X0 + 5, Y0 - 5)]), dtype=object)
        pyogrio.raw.write(flood, wkb, [np.zeros(1, np.int32)], ["id"], geometry_type="Point", crs=UTM33)
    argv = ["floodlora", "labels", "--scene", str(scene), "--flood", str(flood), "--out", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
