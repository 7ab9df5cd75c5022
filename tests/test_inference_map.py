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


def test_map_needs_a_model(tmp_path: Path) -> None:
    from floodlora.errors import ConfigError
    from floodlora.inference.mapping import run_map

    with pytest.raises(ConfigError, match="--model RUN is needed"):
        run_map(",".join(map(str, BBOX)), DATE.isoformat(), tmp_path, None)
