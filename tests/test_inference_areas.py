"""`map --areas`: three areas on a 2-worker Dask LocalCluster, one failing; a rerun resumes."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pyogrio = pytest.importorskip("pyogrio")

from tests.fetch_helpers import BBOX, DATE, make_catalog  # noqa: E402
from tests.inference_helpers import make_run  # noqa: E402

INSIDE_2 = (15.004, 45.003, 15.014, 45.010)  # also covered by the catalog's passes
OUTSIDE = (16.0, 46.0, 16.01, 46.01)  # no item of the catalog covers it


def _areas_csv(path: Path) -> Path:
    rows = [("valley", BBOX, DATE.isoformat()), ("town", INSIDE_2, ""), ("elsewhere", OUTSIDE, "")]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "bbox", "date"])
        w.writerows([(i, ",".join(map(str, b)), d) for i, b, d in rows])
    return path


def test_areas_on_a_local_cluster_record_failures_and_resume(tmp_path: Path) -> None:
    import torch

    from floodlora.inference.areas import format_areas, run_areas
    from floodlora.inference.stac_out import validate_stac

    catalog = make_catalog(tmp_path / "stac")
    torch.manual_seed(0)
    run = make_run(tmp_path / "run", views=("pre", "post"), crop=32)
    areas = _areas_csv(tmp_path / "areas.csv")
    out = tmp_path / "region"
    lines: list[str] = []
    opts = {"model": str(run), "catalog": str(catalog), "threshold": 0.3}
    res = run_areas(areas, out, date=DATE.isoformat(), workers=2, echo=lines.append, **opts)
    assert res.workers == 2 and "LocalCluster(2 workers" in res.scheduler
    status = {r["id"]: r for r in res.rows}
    assert status["valley"]["status"] == "ok" and status["town"]["status"] == "ok", res.rows
    assert status["elsewhere"]["status"] == "failed" and "no" in status["elsewhere"]["reason"]
    assert len({status["valley"]["worker_pid"], status["town"]["worker_pid"]}) >= 1
    for name in ("valley", "town"):
        item = json.loads((out / "areas" / name / "item.json").read_text())
        validate_stac(item)
        assert sum(status[name]["km2"].values()) > 0.5 and "flood" in status[name]["km2"]
    assert not (out / "areas" / "elsewhere" / "item.json").exists()
    collection = json.loads((out / "collection.json").read_text())
    validate_stac(collection)
    assert sorted(x["title"] for x in collection["links"] if x["rel"] == "item") == ["town", "valley"]
    assert set(collection["assets"]) == {"km2_table", "km2_table_gpkg", "status"}
    with open(out / "areas.csv", newline="") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    assert table["elsewhere"]["status"] == "failed" and table["elsewhere"]["reason"]
    assert table["elsewhere"]["km2_flood"] == ""
    total = sum(float(v) for k, v in table["valley"].items() if k.startswith("km2_"))
    summary = json.loads((out / "areas" / "valley" / "summary.json").read_text())
    assert float(table["valley"]["km2_flood"]) == pytest.approx(summary["flooded_km2_pixels"], rel=1e-6)
    assert total > 0.5  # the bbox is about 0.95 x 1.0 km
    meta, _, wkb, _ = pyogrio.raw.read(out / "areas.gpkg")
    assert len(wkb) == 3 and "km2_flood" in list(meta["fields"])
    assert "failed: elsewhere" in format_areas(res)

    mtime = (out / "areas" / "valley" / "item.json").stat().st_mtime_ns
    again = run_areas(areas, out, date=DATE.isoformat(), workers=2, **opts)
    status = {r["id"]: r["status"] for r in again.rows}
    assert status == {"valley": "skipped", "town": "skipped", "elsewhere": "failed"}
    assert (out / "areas" / "valley" / "item.json").stat().st_mtime_ns == mtime
    again_table = (out / "areas.csv").read_text()
    assert again_table.count("skipped") == 2


def _cli(args: list[str]) -> tuple[int, str]:
    from typer.testing import CliRunner

    from floodlora import cli

    result = CliRunner().invoke(cli.app, args)
    assert not isinstance(result.exception, AssertionError)
    from floodlora.errors import FloodLoraError

    if isinstance(result.exception, FloodLoraError):
        return 2, str(result.exception)
    return result.exit_code, result.output


def test_areas_without_geometry_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "areas.csv"
    path.write_text("id,date\nvalley,2024-10-30\n")
    code, message = _cli(["map", "--areas", str(path), "--out", str(tmp_path / "o")])
    assert code == 2 and "no geometry" in message and "\n" not in message.strip()
    geojson = tmp_path / "areas.geojson"
    feature = {"type": "Feature", "properties": {"id": "a", "date": "2024-10-30"}, "geometry": None}
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    code, message = _cli(["map", "--areas", str(geojson), "--out", str(tmp_path / "o")])
    assert code == 2 and "no geometry" in message and "\n" not in message.strip()


def test_unreachable_scheduler_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from floodlora.inference import areas

    monkeypatch.setattr(areas, "CONNECT_TIMEOUT_S", 2.0)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _areas_csv(tmp_path / "areas.csv")
    scheduler = f"tcp://127.0.0.1:{port}"
    args = ["map", "--areas", str(path), "--date", DATE.isoformat(), "--scheduler", scheduler,
            "--out", str(tmp_path / "o")]  # fmt: skip
    code, message = _cli(args)
    assert code == 2 and "no Dask scheduler answered" in message and "\n" not in message.strip()


def test_map_without_bbox_or_areas_says_what_is_needed(tmp_path: Path) -> None:
    code, message = _cli(["map", "--out", str(tmp_path / "o")])
    assert code == 2 and "--bbox and --date" in message
