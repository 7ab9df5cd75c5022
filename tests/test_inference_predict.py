"""Whole-scene prediction: georeferencing, stitching, nodata, alignment, layers, polygons, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from tests.inference_helpers import ConvModel, PointwiseModel, db_scene, make_run, write_scene

from floodlora.data.sar import PRESETS
from floodlora.errors import ConfigError, DataError
from floodlora.inference.predict import (
    PredictOptions,
    encode_date,
    normalise_tile,
    predict_run,
    predict_scene,
    tile_latlon,
)
from floodlora.inference.tiling import plan_tiles, tile_weights

PRESET = PRESETS["clay-v1.5"]
H, W = 75, 90  # not a multiple of the tile (32) nor of the patch (8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture()
def scene(tmp_path: Path) -> dict[str, Path]:
    return {
        "pre": write_scene(tmp_path / "pre.tif", db_scene(H, W, seed=1) + 3.0),
        "post": write_scene(tmp_path / "post.tif", db_scene(H, W, seed=2)),
    }


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), {
            "crs": ds.crs,
            "transform": ds.transform,
            "dtype": ds.dtypes[0],
            "nodata": ds.nodata,
            "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "compression": ds.compression,
        }


def _norm(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float32)
    normed, _ = normalise_tile({"post": {"vv": data[0], "vh": data[1]}}, ["vv", "vh"], "db", PRESET)
    return normed["post"]


def test_output_keeps_crs_transform_and_is_a_cog(
    run_dir: Path, scene: dict[str, Path], tmp_path: Path
) -> None:
    res = predict_run(run_dir, scene, tmp_path / "flood.tif", probabilities=tmp_path / "prob.tif")
    mask, meta = _read(tmp_path / "flood.tif")
    prob, pmeta = _read(tmp_path / "prob.tif")
    with rasterio.open(scene["post"]) as src:
        assert meta["crs"] == src.crs and pmeta["crs"] == src.crs
        assert meta["transform"] == src.transform and pmeta["transform"] == src.transform
    assert mask.shape == prob.shape == (H, W)
    assert meta["dtype"] == "uint8" and meta["nodata"] == 255 and pmeta["dtype"] == "float32"
    assert meta["layout"] == "COG" and meta["compression"] is not None
    assert set(np.unique(mask)) <= {0, 1}
    assert ((prob >= 0.5) == (mask == 1)).all()
    assert res.tiles == len(plan_tiles(H, W, 32, 8)) and res.tile == 32  # the run's crop size
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_pointwise_model_stitching_equals_single_pass(scene: dict[str, Path], tmp_path: Path) -> None:
    opts = PredictOptions(tile=32, overlap=12, cog=False)
    predict_scene(
        PointwiseModel(),
        scene,
        tmp_path / "m.tif",
        preset=PRESET,
        probabilities=tmp_path / "p.tif",
        options=opts,
    )
    prob, _ = _read(tmp_path / "p.tif")
    x = torch.from_numpy(_norm(scene["post"]))[None]
    expected = torch.sigmoid(PointwiseModel()({"post": x}))[0, 0].numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-6)


def test_conv_model_shows_no_seam(scene: dict[str, Path], tmp_path: Path) -> None:
    """A model with a 2-pixel receptive radius: the tile margins (4 px) hide every tile-edge effect,
    so the stitched map equals one pass over the whole scene; naive averaging would not."""
    model = ConvModel().eval()
    views = {"post": scene["post"]}
    opts = PredictOptions(tile=32, overlap=16, cog=False)
    predict_scene(
        model, views, tmp_path / "m.tif", preset=PRESET, probabilities=tmp_path / "p.tif", options=opts
    )
    prob, _ = _read(tmp_path / "p.tif")
    with torch.no_grad():
        expected = torch.sigmoid(model({"post": torch.from_numpy(_norm(scene["post"]))[None]}))[0, 0].numpy()
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    # the same tiles with uniform weights (plain averaging) leave seams where tile edges lie
    plan = plan_tiles(H, W, 32, 16)
    acc, cnt = np.zeros((H, W)), np.zeros((H, W))
    x = torch.from_numpy(_norm(scene["post"]))[None]
    with torch.no_grad():
        for t in plan:
            p = torch.sigmoid(model({"post": x[..., t.row : t.row + 32, t.col : t.col + 32]}))[0, 0].numpy()
            acc[t.row : t.row + 32, t.col : t.col + 32] += p[: H - t.row, : W - t.col]
            cnt[t.row : t.row + 32, t.col : t.col + 32] += 1
    assert np.abs(acc / cnt - expected).max() > 1e-3


def test_vit_stitching_equals_tile_prediction_where_one_tile_counts(
    run_dir: Path, scene: dict[str, Path], tmp_path: Path
) -> None:
    from floodlora.runs import load_run

    model = load_run(run_dir).model
    opts = PredictOptions(tile=32, overlap=16, cog=False)
    res = predict_scene(
        model, scene, tmp_path / "m.tif", preset=PRESET, probabilities=tmp_path / "p.tif", options=opts
    )
    prob, _ = _read(tmp_path / "p.tif")
    plan = plan_tiles(H, W, 32, 16)
    count = np.zeros((H, W), dtype=int)
    for t in plan:
        count[t.row : t.row + 32, t.col : t.col + 32] += tile_weights(t, plan)[: H - t.row, : W - t.col] > 0
    x = {v: torch.from_numpy(_norm(p))[None] for v, p in scene.items()}
    with rasterio.open(scene["post"]) as ds:
        from floodlora.inference.views import Grid

        grid = Grid(ds.crs, ds.transform, H, W, "post")
    checked = 0
    with torch.no_grad():
        for t in plan:
            tile_x = {v: a[..., t.row : t.row + 32, t.col : t.col + 32] for v, a in x.items()}
            latlon = torch.from_numpy(tile_latlon(grid, [t]))
            time_ = torch.from_numpy(encode_date(None))[None]
            direct = torch.sigmoid(model(tile_x, time_, latlon))[0, 0].numpy()
            own = (tile_weights(t, plan) > 0) & (count[t.row : t.row + 32, t.col : t.col + 32] == 1)
            sl = (slice(t.row, t.row + 32), slice(t.col, t.col + 32))
            np.testing.assert_allclose(prob[sl][own], direct[own], atol=1e-5)
            checked += int(own.sum())
    assert checked > H * W // 3 and res.tiles == len(plan)


def test_nodata_propagates(run_dir: Path, tmp_path: Path) -> None:
    data = db_scene(H, W, seed=3)
    data[:, 10:20, 30:50] = -9999.0  # declared nodata
    data[0, 40:45, 5:15] = np.nan  # NaN in one band only
    post = write_scene(tmp_path / "post.tif", data, nodata=-9999.0)
    res = predict_run(run_dir, {"post": post}, tmp_path / "m.tif", probabilities=tmp_path / "p.tif")
    mask, _ = _read(tmp_path / "m.tif")
    prob, _ = _read(tmp_path / "p.tif")
    bad = np.zeros((H, W), dtype=bool)
    bad[10:20, 30:50] = True
    bad[40:45, 5:15] = True
    assert (mask[bad] == 255).all() and (mask[~bad] != 255).all()
    assert np.isnan(prob[bad]).all() and np.isfinite(prob[~bad]).all()
    assert res.valid_pixels == int((~bad).sum())
    assert res.missing_views == ["pre"] and any("pre" in m for m in res.messages)


def test_linear_units_zero_is_nodata(tmp_path: Path) -> None:
    lin = np.power(10.0, db_scene(H, W) / 10.0).astype(np.float32)
    lin[:, :5, :] = 0.0
    post = write_scene(tmp_path / "post.tif", lin, nodata=None)
    opts = PredictOptions(tile=32, units="linear", cog=False)
    predict_scene(PointwiseModel(), {"post": post}, tmp_path / "m.tif", preset=PRESET, options=opts)
    mask, _ = _read(tmp_path / "m.tif")
    assert (mask[:5] == 255).all() and (mask[5:] != 255).all()


def test_mismatched_crs_is_refused_or_aligned(run_dir: Path, scene: dict[str, Path], tmp_path: Path) -> None:
    pre = write_scene(tmp_path / "pre32.tif", db_scene(H, W, seed=4), crs="EPSG:32632",
                      transform=(10.0, 0.0, 910000.0, 0.0, -10.0, 5010000.0))  # fmt: skip
    views = {"pre": pre, "post": scene["post"]}
    with pytest.raises(DataError, match=r"not on the same grid.*CRS EPSG:32632 vs EPSG:32633"):
        predict_run(run_dir, views, tmp_path / "m.tif", options=PredictOptions(align=False))
    far = write_scene(
        tmp_path / "far.tif", db_scene(H, W), transform=(10.0, 0.0, 100000.0, 0.0, -10.0, 1000000.0)
    )
    with pytest.raises(DataError, match="does not overlap"):
        predict_run(run_dir, {"pre": far, "post": scene["post"]}, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_shape_mismatch_is_warped_onto_post_grid(
    run_dir: Path, scene: dict[str, Path], tmp_path: Path
) -> None:
    # pre covers only the left 60 columns of the post scene, at the same resolution and CRS
    pre = write_scene(tmp_path / "pre_small.tif", db_scene(H, 60, seed=5))
    views = {"pre": pre, "post": scene["post"]}
    with pytest.raises(DataError, match="shape 60x75 px vs 90x75 px"):
        predict_run(run_dir, views, tmp_path / "m.tif", options=PredictOptions(align=False))
    res = predict_run(run_dir, views, tmp_path / "m.tif")
    assert res.aligned_views == ["pre"] and any("aligned view pre" in m for m in res.messages)
    mask, _ = _read(tmp_path / "m.tif")
    assert mask.shape == (H, W)
    assert (mask[:, 61:] == 255).all() and (mask[:, :59] != 255).all()  # pre is nodata outside


def test_unknown_view_and_bad_outputs_are_clear_errors(
    run_dir: Path, scene: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="post_asc are not views of this model"):
        predict_run(run_dir, {"post_asc": scene["post"]}, tmp_path / "m.tif")
    with pytest.raises(ConfigError, match="overwrite an input"):
        predict_run(run_dir, scene, scene["post"])
    with pytest.raises(DataError, match=r"\.gpkg, \.geojson, \.fgb or \.shp"):
        predict_run(run_dir, scene, tmp_path / "m.tif", polygons=tmp_path / "p.kml")


def test_tta_uncertainty_layer(run_dir: Path, scene: dict[str, Path], tmp_path: Path) -> None:
    opts = PredictOptions(tile=32, cog=False)
    res = predict_run(run_dir, scene, tmp_path / "m.tif", uncertainty=tmp_path / "u.tif", options=opts)
    unc, meta = _read(tmp_path / "u.tif")
    assert meta["dtype"] == "float32" and np.isfinite(unc).all() and unc.min() >= 0 and unc.max() > 1e-4
    assert any("4 flips" in m for m in res.messages)
    # a flip-equivariant model has zero spread across flips
    u2 = tmp_path / "u2.tif"
    predict_scene(PointwiseModel(), scene, tmp_path / "m2.tif", preset=PRESET, uncertainty=u2,
                  options=opts)  # fmt: skip
    assert np.abs(_read(tmp_path / "u2.tif")[0]).max() < 1e-6


def test_mc_lora_dropout_uncertainty(run_dir: Path, scene: dict[str, Path], tmp_path: Path) -> None:
    opts = PredictOptions(tile=32, cog=False, mc_samples=3)
    predict_run(run_dir, scene, tmp_path / "m.tif", uncertainty=tmp_path / "u.tif", options=opts)
    assert _read(tmp_path / "u.tif")[0].max() > 0
    with pytest.raises(ConfigError, match="unmerged LoRA run"):
        predict_scene(PointwiseModel(), scene, tmp_path / "x.tif", preset=PRESET, options=opts)


def _flood_scene(tmp_path: Path, crs: str, transform: tuple[float, ...]) -> dict[str, Path]:
    """Water (dark) in a disk with an island and in a separate square: polygons with a hole."""
    yy, xx = np.mgrid[0:H, 0:W]
    water = ((yy - 35) ** 2 + (xx - 40) ** 2 < 22**2) & ~((yy - 35) ** 2 + (xx - 40) ** 2 < 6**2)
    water[60:70, 75:85] = True
    data = np.where(water, -22.0, -5.0)[None].repeat(2, 0).astype(np.float32)
    return {"post": write_scene(tmp_path / "post.tif", data, crs=crs, transform=transform)}


def test_polygon_area_equals_mask_area_projected(tmp_path: Path) -> None:
    views = _flood_scene(tmp_path, "EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0))
    opts = PredictOptions(tile=32)
    gpkg = tmp_path / "f.gpkg"
    res = predict_scene(PointwiseModel(), views, tmp_path / "m.tif", preset=PRESET, polygons=gpkg,
                        options=opts)  # fmt: skip
    mask, _ = _read(tmp_path / "m.tif")
    flooded_km2 = (mask == 1).sum() * 100.0 / 1e6
    import pyogrio
    import shapely
    from pyproj import CRS

    _, _, wkb, fields = pyogrio.raw.read(gpkg)
    info = pyogrio.read_info(gpkg)
    assert len(wkb) == res.polygon_count == 2 and info["layer_name"] == "flood"
    assert CRS.from_user_input(info["crs"]).to_epsg() == 32633
    # ellipsoidal area vs planar UTM pixel area (scale factor 0.9996 at the central meridian)
    assert fields[0].sum() == pytest.approx(flooded_km2, rel=5e-3)
    assert res.polygon_km2 == pytest.approx(fields[0].sum(), rel=1e-9)
    assert res.flooded_km2 == pytest.approx(flooded_km2, rel=1e-9)
    assert sum(len(g.interiors) for g in shapely.from_wkb(wkb)) == 1  # the ring keeps its hole


def test_polygon_area_geographic_crs_geojson(tmp_path: Path) -> None:
    import json

    views = _flood_scene(tmp_path, "EPSG:4326", (0.0001, 0.0, 12.0, 0.0, -0.0001, 45.0))
    res = predict_scene(PointwiseModel(), views, tmp_path / "m.tif", preset=PRESET,
                        polygons=tmp_path / "f.geojson", options=PredictOptions(tile=32))  # fmt: skip
    fc = json.loads((tmp_path / "f.geojson").read_text())
    total = sum(f["properties"]["area_km2"] for f in fc["features"])
    assert len(fc["features"]) == 2 and total == pytest.approx(res.polygon_km2)
    # equal-area (ellipsoid) vs spherical pixel areas: within 0.5 %
    assert total == pytest.approx(res.flooded_km2, rel=5e-3)
    lon, lat = fc["features"][0]["geometry"]["coordinates"][0][0]
    assert 12.0 < lon < 12.01 and 44.99 < lat < 45.0


def test_cli_predict_and_one_line_errors(
    run_dir: Path, scene: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from typer.testing import CliRunner

    from floodlora import cli

    args = ["predict", str(run_dir), "--view", f"post={scene['post']}", "--view", f"pre={scene['pre']}",
            "--out", str(tmp_path / "m.tif"), "--polygons", str(tmp_path / "f.gpkg"),
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.tif").is_file() and (tmp_path / "f.gpkg").is_file()
    assert "km" in result.output
    monkeypatch.setattr(
        "sys.argv", ["floodlora", "predict", str(run_dir), "--view", "flood=x.tif", "--out", "o.tif"]
    )
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "flood" in err and "Traceback" not in err


def test_metadata_encodings_match_training() -> None:
    """predict codes --date as training codes chip dates, and refuses a date that is not ISO."""
    from floodlora.encodings import encode_time

    for date in (None, "2024-10-30", "2021-07-14T17:45:00"):
        np.testing.assert_allclose(encode_date(date), encode_time(date), atol=1e-7)
    with pytest.raises(ConfigError, match="ISO date"):
        encode_date("30/10/2024")
