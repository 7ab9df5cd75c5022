"""`map` writes a STAC Item (every output an asset, derived_from links) that validates offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("pyogrio")
pytest.importorskip("rio_stac")
pytest.importorskip("jsonschema")

from tests.fetch_helpers import BBOX, DATE, make_catalog
from tests.inference_helpers import make_run


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `floodlora map` folder from the offline catalog and a tiny run."""
    import torch
    from typer.testing import CliRunner

    from floodlora import cli

    root = tmp_path_factory.mktemp("stac")
    catalog = make_catalog(root / "catalog")
    torch.manual_seed(0)
    run = make_run(root / "run", views=("pre", "post"), crop=32)
    out = root / "event"
    args = ["map", "--bbox", ",".join(map(str, BBOX)), "--date", DATE.isoformat(), "--model", str(run),
            "--catalog", str(catalog), "--out", str(out), "--threshold", "0.3", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "item.json" in result.output and "index.html" in result.output
    return out


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_item_lists_every_output_and_validates_offline(mapped: Path, no_network: None) -> None:
    from floodlora.inference.stac_out import PROJECTION_V1_1, validate_stac

    item = json.loads((mapped / "item.json").read_text())
    validate_stac(item)
    summary = json.loads((mapped / "summary.json").read_text())
    assert summary["files"]["stac_item"] == "item.json" and summary["files"]["viewer"] == "index.html"
    expected = {k for k in summary["files"] if k != "stac_item"} | {"summary"}
    assert set(item["assets"]) == expected
    for key, asset in item["assets"].items():
        assert asset["href"].startswith("./") and (mapped / asset["href"]).is_file(), key
        assert asset.get("roles") and asset.get("type"), key
    assert item["assets"]["mask"]["type"].endswith("profile=cloud-optimized")
    assert item["assets"]["polygons"]["type"] == "application/geopackage+sqlite3"
    assert PROJECTION_V1_1 in item["stac_extensions"] and item["properties"]["proj:epsg"] == 32633
    w, s, e, n = item["bbox"]
    assert w <= BBOX[0] + 1e-3 and s <= BBOX[1] + 1e-3 and e >= BBOX[2] - 1e-3 and n >= BBOX[3] - 1e-3
    assert item["properties"]["datetime"].startswith("2024-11-01")
    assert item["properties"]["start_datetime"].startswith("2024-10-18")
    derived = [link for link in item["links"] if link["rel"] == "derived_from"]
    titles = " ".join(link["title"] for link in derived)
    for item_id in ("S1A_desc117_pre", "S1A_desc117_post_north", "S1A_desc117_post_south"):
        assert item_id in titles
    scene_links = [link for link in derived if "floodlora:scene" in link]
    assert all(link["href"].endswith(".json") and Path(link["href"]).is_file() for link in scene_links)
    (model,) = [link for link in derived if link["title"].startswith("model")]
    assert model["floodlora:sha256"] == summary["model"]["sha256"]
    assert model["href"].startswith("file://") and model["href"].endswith("weights.safetensors")


def test_collection_validates_and_broken_documents_do_not(
    mapped: Path, tmp_path: Path, no_network: None
) -> None:
    from floodlora.inference.stac_out import StacValidationError, validate_stac, write_collection

    path = write_collection(mapped.parent, [mapped / "item.json"], "floods", "test maps")
    collection = json.loads(path.read_text())
    validate_stac(collection)
    (link,) = [x for x in collection["links"] if x["rel"] == "item"]
    assert (path.parent / link["href"]).resolve() == (mapped / "item.json").resolve()
    item = json.loads((mapped / "item.json").read_text())
    with pytest.raises(StacValidationError, match="bbox"):
        validate_stac({**item, "bbox": [1, 2, 3]})
    with pytest.raises(StacValidationError, match="proj:epsg"):
        validate_stac({**item, "properties": {**item["properties"], "proj:epsg": "32633"}})
    with pytest.raises(StacValidationError, match="not vendored"):
        validate_stac({**item, "stac_extensions": ["https://example.com/other/v1.0.0/schema.json"]})
