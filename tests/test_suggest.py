"""`floodlora suggest`: N tile footprints inside the scene, ordered by the model's uncertainty."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from floodlora.cli import app
from inference_helpers import UTM33, db_scene, make_run, write_scene

X0, Y0, RES = 500000.0, 5000000.0, 10.0
H, W = 96, 80


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("suggest")
    run = make_run(tmp / "run", crop=32)
    return run, write_scene(tmp / "post.tif", db_scene(H, W, seed=2))


def _read(path: Path) -> tuple[dict, list, dict[str, np.ndarray]]:
    import pyogrio
    import shapely

    meta, _, wkb, values = pyogrio.raw.read(path)
    return meta, list(shapely.from_wkb(wkb)), dict(zip(meta["fields"], values, strict=True))


@pytest.mark.parametrize("mc", [0, 3])
def test_suggest_returns_n_footprints_ordered_by_uncertainty(
    setup: tuple[Path, Path], tmp_path: Path, mc: int
) -> None:
    import rasterio
    import shapely

    from floodlora.inference.predict import PredictOptions, predict_run

    run, scene = setup
    out = tmp_path / "tiles.gpkg"
    res = CliRunner().invoke(
        app,
        ["suggest", str(run), "--view", f"post={scene}", "--n", "4", "--size", "32", "--out", str(out),
         "--mc-dropout", str(mc), "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "4 of 9 tiles written" in res.output
    meta, geoms, cols = _read(out)
    assert len(geoms) == 4 and rasterio.crs.CRS.from_user_input(meta["crs"]) == rasterio.crs.CRS.from_string(
        UTM33
    )
    scene_box = shapely.box(X0, Y0 - H * RES, X0 + W * RES, Y0)
    assert all(scene_box.contains(g) and g.area == pytest.approx((32 * RES) ** 2) for g in geoms)
    assert list(cols["rank"]) == [1, 2, 3, 4]
    unc = np.asarray(cols["uncertainty"])
    assert np.all(np.diff(unc) <= 0) and unc[-1] > 0

    # the same ranking from the uncertainty layer `predict` writes (same spread, same seed)
    opts = PredictOptions(tta=mc == 0, mc_samples=mc, cog=False)
    predict_run(run, {"post": scene}, tmp_path / "m.tif", uncertainty=tmp_path / "u.tif", options=opts)
    with rasterio.open(tmp_path / "u.tif") as ds:
        spread = ds.read(1)
    means = {}
    for r in (0, 32, 64):
        for c in (0, 32, 48):
            means[(r, c)] = float(np.nanmean(spread[r : r + 32, c : c + 32]))
    top = sorted(means, key=lambda k: -means[k])[:4]
    assert list(zip(cols["row"], cols["col"], strict=True)) == top
    np.testing.assert_allclose(unc, [means[k] for k in top], rtol=1e-5)
    for g, (r, c) in zip(geoms, top, strict=True):
        assert g.bounds == pytest.approx(
            (X0 + c * RES, Y0 - (r + 32) * RES, X0 + (c + 32) * RES, Y0 - r * RES)
        )


def test_suggest_geojson_is_wgs84(setup: tuple[Path, Path], tmp_path: Path) -> None:
    from floodlora.inference.suggest import suggest_tiles

    run, scene = setup
    res = suggest_tiles(run, {"post": scene}, tmp_path / "t.geojson", n=20, size=48)
    assert len(res.tiles) == 4 and any("only 4 tiles" in m for m in res.messages)
    _, geoms, _ = _read(tmp_path / "t.geojson")
    lon, lat = geoms[0].centroid.x, geoms[0].centroid.y
    assert 14 < lon < 16 and 44 < lat < 46  # UTM 33N, 500 km E, 5000 km N


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--n", "0"], "--n must be >= 1"), (["--out", "tiles.txt"], "write tiles as .gpkg, .geojson or .fgb"),
     (["--mc-dropout", "1"], "at least 2 samples")],
)  # fmt: skip
def test_suggest_bad_inputs_are_one_line(
    setup: tuple[Path, Path], tmp_path: Path, args: list[str], message: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    from floodlora import cli

    run, scene = setup
    argv = [
        "floodlora",
        "suggest",
        str(run),
        "--view",
        f"post={scene}",
        "--out",
        str(tmp_path / "t.gpkg"),
        *args,
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
