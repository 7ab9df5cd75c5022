"""Flood classes: new water only, reference water apart, terrain / radar exclusions, confidence,
minimum mapping unit; offline layers (local GeoTIFFs and a static STAC catalog)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from tests.inference_helpers import PointwiseModel, write_scene
from tests.terrain_helpers import valley_dem, write_raster
from torch import Tensor, nn

from floodlora.data.sar import PRESETS
from floodlora.errors import DataError
from floodlora.inference.classes import (
    DRY,
    EXCLUDED,
    FLOOD,
    NODATA,
    REFERENCE,
    ClassOptions,
    assign_classes,
    confidence,
    remove_small,
)
from floodlora.inference.predict import PredictOptions, predict_scene

PRESET = PRESETS["clay-v1.5"]
H, W = 64, 80
T = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)  # UTM 33N, 10 m
PIXEL_KM2 = 1e-4


def _lakes(disks: list[tuple[int, int, int]], seed: int) -> np.ndarray:
    """dB VV/VH: land -9/-16 dB, water -21/-27 dB in the given disks (row, col, radius)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    water = np.zeros((H, W), bool)
    for r, c, rad in disks:
        water |= (yy - r) ** 2 + (xx - c) ** 2 < rad**2
    vv = np.where(water, -21.0, -9.0) + rng.normal(0, 1.0, (H, W))
    vh = np.where(water, -27.0, -16.0) + rng.normal(0, 1.0, (H, W))
    return np.stack([vv, vh]).astype(np.float32)


LAKE = (20, 20, 10)  # there before and after the event
FLOODED = (40, 55, 14)  # new water after the event


class BothOutputs(nn.Module):
    """A stand-in for the recipe: a water output (dark post-event pixels) and a flood output that,
    like the measured one, maps every dark pixel of the post view whatever the pre view shows."""

    views = ("pre", "post")
    bands = ("vv", "vh")
    outputs = ("flood", "water")
    patch_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.target: str | None = None

    def forward(self, views: Mapping[str, Tensor], time: object = None, latlon: object = None) -> Tensor:
        x = views["post"]
        return -4.0 * x[:, :1] - 2.0 * x[:, 1:2] - 3.0


def _scene(tmp_path: Path, pre_disks: list, post_disks: list) -> dict[str, Path]:
    return {
        "pre": write_scene(tmp_path / "pre.tif", _lakes(pre_disks, 1), transform=T),
        "post": write_scene(tmp_path / "post.tif", _lakes(post_disks, 2), transform=T),
    }


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _truth(disks: list) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.zeros((H, W), bool)
    for r, c, rad in disks:
        out |= (yy - r) ** 2 + (xx - c) ** 2 < rad**2
    return out


# --------------------------------------------------------------------------------------------------
# per-pixel rules
# --------------------------------------------------------------------------------------------------


def test_assign_classes_precedence() -> None:
    flood = np.array([[1, 1, 1, 1, 0]], bool)
    valid = np.array([[1, 1, 1, 0, 1]], bool)
    ref = np.array([[0, 1, 1, 0, 0]], bool)
    exc = np.array([[0, 0, 1, 1, 0]], bool)
    assert assign_classes(flood, valid, ref, exc).tolist() == [[FLOOD, REFERENCE, EXCLUDED, NODATA, DRY]]


def test_confidence_and_min_area() -> None:
    prob = np.array([[0.5, 1.0, 0.0, 0.75, 0.25, 0.9]], np.float32)
    valid = np.array([[1, 1, 1, 1, 1, 0]], bool)
    assert confidence(prob, valid, 0.5).tolist() == [[0, 100, 100, 50, 50, NODATA]]
    spread = np.full_like(prob, 0.25)
    assert confidence(prob, valid, 0.5, spread).tolist() == [[0, 50, 50, 25, 25, NODATA]]
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[2:5, 2:5] = True
    mask[5, 0] = True  # diagonal to nothing: its own region
    kept, removed = remove_small(mask, 2)
    assert removed == 2 and kept.sum() == 9 and not kept[0, 0]


# --------------------------------------------------------------------------------------------------
# new water means change
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pair", "water", "otsu"])
def test_pre_equal_post_gives_no_flood(tmp_path: Path, mode: str) -> None:
    model = BothOutputs() if mode == "water" else PointwiseModel()
    scene = _scene(tmp_path, [LAKE, FLOODED], [LAKE, FLOODED])
    same = {"pre": scene["post"], "post": scene["post"]}
    opts = PredictOptions(tile=32, classes=ClassOptions(classes_path=tmp_path / "c.tif", pre_water=mode))
    res = predict_scene(model, same, tmp_path / "m.tif", preset=PRESET, options=opts)
    classes = _read(tmp_path / "c.tif")
    valid = classes != NODATA
    assert (classes[valid] == FLOOD).mean() <= 0.01
    assert any("new water only" in m for m in res.messages)
    # without the rule the same output maps both lakes as flood
    opts = PredictOptions(tile=32, classes=ClassOptions(classes_path=tmp_path / "c0.tif", pre_water="off"))
    predict_scene(model, same, tmp_path / "m0.tif", preset=PRESET, options=opts)
    assert (_read(tmp_path / "c0.tif") == FLOOD).mean() > 0.15


@pytest.mark.parametrize("mode", ["pair", "water", "otsu"])
def test_new_water_with_the_real_pre_view(tmp_path: Path, mode: str) -> None:
    model = BothOutputs() if mode == "water" else PointwiseModel()
    scene = _scene(tmp_path, [LAKE], [LAKE, FLOODED])
    opts = PredictOptions(tile=32, classes=ClassOptions(classes_path=tmp_path / "c.tif", pre_water=mode))
    res = predict_scene(model, scene, tmp_path / "m.tif", preset=PRESET, options=opts)
    flood = _read(tmp_path / "c.tif") == FLOOD
    truth = _truth([FLOODED]) & ~_truth([LAKE])
    f1 = 2 * (flood & truth).sum() / (flood.sum() + truth.sum())
    lake = _truth([LAKE])
    assert f1 > 0.9 and (flood & lake).sum() <= 0.01 * lake.sum()  # Otsu may miss a speckle pixel
    assert (_read(tmp_path / "m.tif") == 1).sum() == flood.sum() == res.flooded_pixels


def test_model_pre_water_needs_a_water_output(tmp_path: Path) -> None:
    from floodlora.errors import ConfigError

    scene = _scene(tmp_path, [LAKE], [LAKE])
    opts = PredictOptions(tile=32, classes=ClassOptions(pre_water="water"))
    with pytest.raises(ConfigError, match="needs a run with a water output"):
        predict_scene(PointwiseModel(), scene, tmp_path / "m.tif", preset=PRESET, options=opts)


# --------------------------------------------------------------------------------------------------
# reference water, km2 per class, confidence, min area
# --------------------------------------------------------------------------------------------------


def _reference_lonlat(tmp_path: Path, north_of_row: int) -> Path:
    """JRC-like occurrence in EPSG:4326 over the scene: 90 % above scene row `north_of_row`, 5 % below."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(T[2] - 200, T[5] + 200)
    lon1, lat1 = to_ll.transform(T[2] + W * 10 + 200, T[5] - H * 10 - 200)
    _, lat_cut = to_ll.transform(T[2] + W * 5, T[5] - north_of_row * 10)
    n, m = 200, 200
    dx, dy = (lon1 - lon0) / m, (lat0 - lat1) / n
    lats = lat0 - (np.arange(n) + 0.5) * dy
    occ = np.where(lats[:, None] >= lat_cut, 90, 5).repeat(m, axis=1).astype(np.uint8)
    return write_raster(tmp_path / "occurrence.tif", occ, "EPSG:4326", (dx, 0, lon0, 0, -dy, lat0), 255)


def test_reference_water_km2_confidence_and_min_area(tmp_path: Path) -> None:
    scene = _scene(tmp_path, [LAKE], [LAKE, FLOODED, (58, 10, 2)])  # + a speck of new water
    ref = _reference_lonlat(tmp_path, north_of_row=30)
    cls = ClassOptions(classes_path=tmp_path / "c.tif", confidence_path=tmp_path / "conf.tif",
                       reference_water=[str(ref)], reference_threshold=50, pre_water="otsu")  # fmt: skip
    opts = PredictOptions(tile=32, classes=cls, min_area_m2=2000.0)  # 20 px
    res = predict_scene(PointwiseModel(), scene, tmp_path / "m.tif", preset=PRESET, options=opts)
    classes = _read(tmp_path / "c.tif")
    assert any("warped reference water occurrence.tif" in m for m in res.messages)
    assert any("below the minimum area removed from the mask" in m for m in res.messages)
    ref_rows = classes[:29] == REFERENCE
    assert ref_rows.all() and (classes[31:] != REFERENCE).all()  # rows 29-30: either way (nearest)
    assert not (classes[:29] == FLOOD).any()
    assert not (classes[56:61, 7:14] == FLOOD).any()  # the speck is below the minimum mapping unit
    mask = _read(tmp_path / "m.tif")
    assert np.array_equal(mask == 1, classes == FLOOD)
    s = res.classes
    assert s is not None
    for code, name in ((DRY, "dry"), (FLOOD, "flood"), (REFERENCE, "reference_water")):
        n = int((classes == code).sum())
        assert s["classes_pixels"][name] == n
        assert s["classes_km2"][name] == pytest.approx(n * PIXEL_KM2, rel=5e-3)
    conf = _read(tmp_path / "conf.tif")
    assert conf.dtype == np.uint8 and conf.max() <= 100
    assert conf[_truth([FLOODED]) & (classes == FLOOD)].mean() > 50


def test_reference_water_must_cover_the_scene(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.inference_helpers import make_run
    from tests.test_cli_errors import _cli_error

    scene = _scene(tmp_path, [LAKE], [LAKE])
    small = write_raster(tmp_path / "small.tif", np.full((10, 10), 100, np.uint8), "EPSG:32633",
                         (10.0, 0.0, T[2], 0.0, -10.0, T[5]), 255)  # fmt: skip
    cls = ClassOptions(reference_water=[str(small)])
    with pytest.raises(DataError, match="does not cover the scene"):
        predict_scene(PointwiseModel(), scene, tmp_path / "m.tif", preset=PRESET,
                      options=PredictOptions(tile=32, classes=cls))  # fmt: skip
    run = make_run(tmp_path / "run", views=("pre", "post"))
    args = ["predict", str(run), "--view", f"post={scene['post']}", "--out", str(tmp_path / "x.tif"),
            "--reference-water", str(small), "--no-progress"]  # fmt: skip
    line = _cli_error(args, capsys, monkeypatch)
    assert "reference water" in line and "does not cover the scene (it covers 2% of it)" in line


# --------------------------------------------------------------------------------------------------
# terrain: HAND, slope, shadow and layover from a DEM
# --------------------------------------------------------------------------------------------------


def _dem(tmp_path: Path, name: str = "dem.tif", crs: str = "EPSG:32633") -> Path:
    dem = valley_dem(H // 3 + 4, W // 3 + 4, 30.0, wall_from=int((W // 3 + 4) * 0.75))
    return write_raster(tmp_path / name, dem, crs, (30.0, 0.0, T[2] - 60, 0.0, -30.0, T[5] + 60), -9999.0)


@pytest.mark.parametrize(("orbit", "rule"), [("descending", "shadow"), ("ascending", "layover")])
def test_terrain_exclusions(tmp_path: Path, orbit: str, rule: str) -> None:
    from floodlora.data.terrain import SceneGrid, TerrainOptions, terrain_exclusions

    grid = SceneGrid("EPSG:32633", rasterio.Affine(*T), W, H)
    grid.crs = rasterio.crs.CRS.from_string("EPSG:32633")
    opts = TerrainOptions(drainage_km2=0.01, orbit_state=orbit, incidence_deg=38.0)
    ex = terrain_exclusions([str(_dem(tmp_path))], grid, opts)
    east = ex.excluded[:, int(W * 0.85) :]
    valley = ex.excluded[:, W // 2 - 5 : W // 2 + 5]
    assert east.mean() > 0.9 and valley.mean() < 0.05
    assert ex.counts["slope"] > 0 and ex.counts["hand"] > 0 and ex.counts[rule] > 0
    other = {"descending": "layover", "ascending": "shadow"}[orbit]
    assert ex.counts[other] == 0


def test_excluded_pixels_are_never_flood(tmp_path: Path) -> None:
    from floodlora.data.terrain import TerrainOptions

    scene = _scene(tmp_path, [], [LAKE, (32, 72, 12)])  # new water on the steep wall (dark shadow)
    cls = ClassOptions(classes_path=tmp_path / "c.tif", dem=[str(_dem(tmp_path))], pre_water="otsu",
                       terrain=TerrainOptions(drainage_km2=0.01, orbit_state="descending"))  # fmt: skip
    res = predict_scene(PointwiseModel(), scene, tmp_path / "m.tif", preset=PRESET,
                        options=PredictOptions(tile=32, classes=cls))  # fmt: skip
    classes = _read(tmp_path / "c.tif")
    assert (classes[:, int(W * 0.85) :] == EXCLUDED).mean() > 0.9
    assert (classes == FLOOD).any() and not (classes[:, int(W * 0.85) :] == FLOOD).any()
    assert any("incidence angle unknown" in m for m in res.messages)


def test_dem_that_does_not_cover_the_scene(tmp_path: Path) -> None:
    from floodlora.data.terrain import SceneGrid, TerrainOptions, terrain_exclusions

    dem = write_raster(tmp_path / "far.tif", np.zeros((10, 10), np.float32), "EPSG:32633",
                       (30.0, 0.0, T[2] + 50_000, 0.0, -30.0, T[5]), -9999.0)  # fmt: skip
    grid = SceneGrid(rasterio.crs.CRS.from_string("EPSG:32633"), rasterio.Affine(*T), W, H)
    with pytest.raises(DataError, match=r"DEM .*far\.tif does not cover the scene \(it covers 0% of it\)"):
        terrain_exclusions([str(dem)], grid, TerrainOptions())


# --------------------------------------------------------------------------------------------------
# map: layers from the STAC catalog
# --------------------------------------------------------------------------------------------------


def test_map_classes_from_stac(tmp_path: Path) -> None:
    pytest.importorskip("pystac")
    from tests.fetch_helpers import BBOX, DATE, make_catalog
    from tests.inference_helpers import make_run
    from tests.terrain_helpers import add_layers
    from typer.testing import CliRunner

    from floodlora import cli

    catalog = make_catalog(tmp_path / "stac")
    add_layers(catalog)
    torch.manual_seed(0)
    run = make_run(tmp_path / "run", views=("pre", "post"), crop=32)
    out = tmp_path / "map"
    args = ["map", "--bbox", ",".join(map(str, BBOX)), "--date", DATE.isoformat(), "--model", str(run),
            "--catalog", str(catalog), "--out", str(out), "--threshold", "0.01", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "reference water: jrc-gsw jrc-gsw-tile" in result.output and "classes:" in result.output
    summary = json.loads((out / "summary.json").read_text())
    classes = _read(out / "classes.tif")
    with rasterio.open(out / "classes.tif") as ds:
        px_km2 = abs(ds.transform.a * ds.transform.e) / 1e6
    names = ((DRY, "dry"), (FLOOD, "flood"), (REFERENCE, "reference_water"), (EXCLUDED, "excluded"))
    for code, name in names:
        n = int((classes == code).sum())
        assert summary["classes_pixels"][name] == n
        assert summary["classes_km2"][name] == pytest.approx(n * px_km2, rel=5e-3, abs=1e-9)
    assert summary["classes_pixels"]["reference_water"] > 0.2 * classes.size
    assert summary["exclusions_pixels"]["slope"] > 0 and summary["classes_pixels"]["excluded"] > 0
    assert any("shadow" in k or "layover" in k for k in summary["exclusions_pixels"])
    assert "incidence angle unknown" not in result.output  # the post items carry it
    mask = _read(out / "flood.tif")
    assert np.array_equal(mask == 1, classes == FLOOD)
    assert summary["flooded_km2_pixels"] == pytest.approx(summary["classes_km2"]["flood"], rel=1e-9)
    assert _read(out / "confidence.tif").max() <= 100
