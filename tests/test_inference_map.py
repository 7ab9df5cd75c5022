"""floodlora map end to end on a local STAC catalog with a tiny run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pyogrio = pytest.importorskip("pyogrio")
pytest.importorskip("pystac")

from tests.fetch_helpers import BBOX, DATE, make_catalog  # noqa: E402
from tests.inference_helpers import make_run  # noqa: E402


def test_map_end_to_end(tmp_path: Path) -> None:
    import torch
    from PIL import Image
    from typer.testing import CliRunner

    from floodlora import cli

    catalog = make_catalog(tmp_path / "stac")
    torch.manual_seed(0)
    run = make_run(tmp_path / "run", views=("pre", "post"), crop=32)
    out = tmp_path / "map"
    args = ["map", "--bbox", ",".join(map(str, BBOX)), "--date", DATE.isoformat(), "--model", str(run),
            "--catalog", str(catalog), "--out", str(out), "--threshold", "0.3", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "flooded:" in result.output and "km2" in result.output
    for name in ("scenes/pre.tif", "scenes/post.tif", "scenes/fetch.json", "flood.tif", "flood.gpkg",
                 "quicklook.png", "summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == 0.3 and summary["bbox"] == list(BBOX)
    assert summary["scenes"]["post"]["items"] == ["S1A_desc117_post_north", "S1A_desc117_post_south"]
    assert summary["scenes"]["pre"]["items"] == ["S1A_desc117_pre"]
    weights = (run / "weights.safetensors").read_bytes()
    assert summary["model"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert summary["model"]["views"] == ["post", "pre"] and summary["model"]["missing_views"] == []
    _, _, wkb, fields = pyogrio.raw.read(out / "flood.gpkg")
    assert len(wkb) == summary["polygons"]
    assert summary["flooded_km2"] == pytest.approx(float(fields[0].sum()), rel=1e-9)
    assert summary["flooded_km2"] == pytest.approx(summary["flooded_km2_pixels"], rel=5e-3)
    img = np.asarray(Image.open(out / "quicklook.png").convert("RGB"))
    assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 5


def test_run_map_needs_a_model_or_an_adapter(tmp_path: Path) -> None:
    from floodlora.errors import ConfigError
    from floodlora.inference.mapping import run_map

    with pytest.raises(ConfigError, match="--model RUN is needed"):
        run_map(",".join(map(str, BBOX)), DATE.isoformat(), tmp_path, None)


def _lake_truth(mask_tif: Path) -> np.ndarray:
    """Where the catalog's new lake lies on the map's grid."""
    import rasterio
    from pyproj import Transformer
    from tests.fetch_helpers import lake_mask

    with rasterio.open(mask_tif) as ds:
        rows, cols = np.mgrid[0 : ds.height, 0 : ds.width]
        xs, ys = rasterio.transform.xy(ds.transform, rows.ravel(), cols.ravel())
        lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
        return lake_mask(np.asarray(lat), np.asarray(lon)).reshape(ds.height, ds.width)


def test_map_without_a_model_self_adapts_the_embedded_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --model: the scenes teach the embedded encoder, with no labels, and the lake is mapped."""
    from dataclasses import replace

    import rasterio
    import torch
    from typer.testing import CliRunner

    from floodlora import cli
    from floodlora.training import self_adapt

    # a third of the default budget: one small chip learns its lake in a few epochs
    monkeypatch.setattr(self_adapt, "SELF_ADAPT", replace(self_adapt.SELF_ADAPT, max_epochs=4))

    catalog = make_catalog(tmp_path / "stac", water=True)
    torch.manual_seed(0)
    out = tmp_path / "map"
    args = ["map", "--bbox", ",".join(map(str, BBOX)), "--date", DATE.isoformat(), "--catalog", str(catalog),
            "--out", str(out), "--reference-water", "none", "--dem", "none", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "label-free map: the embedded encoder self-adapted to these scenes (model/)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_free"] is True and summary["self_adaptation"]["labels_used"] is False
    teacher = next(iter(summary["self_adaptation"]["teacher"].values()))
    assert teacher["kind"] == "flood" and teacher["tiles_kept"]["vv"] >= 1  # the pre view is used
    assert (out / "model" / "adapt.json").is_file() and summary["model"]["run"] == str(
        (out / "model").resolve()
    )
    with rasterio.open(out / "flood.tif") as ds:
        flood = ds.read(1) == 1
    truth = _lake_truth(out / "flood.tif")
    iou = (flood & truth).sum() / max((flood | truth).sum(), 1)
    assert iou > 0.7, iou


def test_map_of_a_dry_scene_without_a_model_is_dry_and_says_why(tmp_path: Path) -> None:
    import rasterio
    from typer.testing import CliRunner

    from floodlora import cli

    catalog = make_catalog(tmp_path / "stac")  # constant backscatter: no tile is bimodal
    out = tmp_path / "map"
    args = ["map", "--bbox", ",".join(map(str, BBOX)), "--date", DATE.isoformat(), "--catalog", str(catalog),
            "--out", str(out), "--reference-water", "none", "--dem", "none", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "no water found" in result.output and "the scene looks dry" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flooded_km2"] == 0.0 and summary["label_free"] is True
    with rasterio.open(out / "flood.tif") as ds:
        mask = ds.read(1)
    assert set(np.unique(mask)) <= {0, 255} and (mask == 0).any()
    assert not (out / "model").exists()
