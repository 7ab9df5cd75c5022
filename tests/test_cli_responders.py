"""The responder commands (fetch, map, labels, adapt, suggest) under careless and hostile input.

Each fault is one line (exit code 2, no traceback), writes nothing outside --out, leaves no run folder
that blocks a rerun and no scratch files in the system temp directory.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pystac")
pyogrio = pytest.importorskip("pyogrio")

from tests.fetch_helpers import BBOX, DATE, make_catalog  # noqa: E402

from floodlora import cli  # noqa: E402

BBOX_TEXT = ",".join(map(str, BBOX))


def _cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, code: int = 2
) -> list[str]:
    """Run `floodlora ARGS` in process; assert the exit code and no traceback; return the printed lines."""
    monkeypatch.setattr("sys.argv", ["floodlora", *args])
    capsys.readouterr()
    try:
        cli.main()
        exit_code = 0
    except SystemExit as exc:
        exit_code = exc.code or 0
    out, err = capsys.readouterr()
    assert exit_code == code, out + err
    assert "Traceback" not in err and "warnings.warn" not in err and ".py:" not in err
    return [line for line in (out + err).splitlines() if line.strip()]


def _one_error(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Exit code 2 and exactly one line, an error."""
    lines = _cli(args, capsys, monkeypatch)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(autouse=True)
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The system temp directory of the test: the command must leave it as it found it."""
    where = tmp_path / "system-tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    yield where
    assert sorted(p.name for p in where.iterdir()) == []


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COGs and a static STAC catalog (tests/fetch_helpers.py); each test copies the catalog's JSON."""
    return make_catalog(tmp_path_factory.mktemp("stac")).parent


@pytest.fixture()
def catalog(catalog_root: Path, tmp_path: Path) -> Path:
    """This test's own copy of the catalog JSON (the assets' hrefs are absolute: shared, read only)."""
    shutil.copytree(catalog_root, tmp_path / "stac")
    return tmp_path / "stac" / "catalog.json"


def _item_file(catalog: Path, item_id: str) -> Path:
    return catalog.parent / "sentinel-1-rtc" / item_id / f"{item_id}.json"


def _break_item(catalog: Path, item_id: str, how: str) -> None:
    path = _item_file(catalog, item_id)
    if how == "no-datetime":
        item = json.loads(path.read_text())
        item["properties"]["datetime"] = None
        path.write_text(json.dumps(item))
    elif how == "malformed":
        path.write_text(path.read_text()[:200])
    else:  # the collection links to a file that is not there
        path.unlink()


def _fetch_args(catalog: Path, out: Path, *extra: str) -> list[str]:
    return ["fetch", "--bbox", BBOX_TEXT, "--date", DATE.isoformat(), "--catalog", str(catalog),
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


# ---- fetch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["no-datetime", "malformed", "missing"])
def test_fetch_unusable_items_that_were_needed_are_named(
    how: str, catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    for item_id in ("S1A_desc117_post_north", "S1A_desc117_post_south"):
        _break_item(catalog, item_id, how)
    out = tmp_path / "out"
    line = _one_error(_fetch_args(catalog, out), capsys, monkeypatch)
    reason = {"no-datetime": "no datetime", "malformed": "not valid JSON", "missing": "file not found"}[how]
    assert "2 unusable STAC item(s) skipped" in line and f"S1A_desc117_post_north.json ({reason})" in line
    assert not out.exists()


def test_fetch_every_item_unusable(
    catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    for path in (catalog.parent / "sentinel-1-rtc").glob("*/*.json"):
        path.write_text("{")
    line = _one_error(_fetch_args(catalog, tmp_path / "out"), capsys, monkeypatch)
    assert "no items of collection 'sentinel-1-rtc'" in line and "8 unusable STAC item(s) skipped" in line
    assert not (tmp_path / "out").exists()


def test_fetch_skips_an_unusable_item_with_a_warning(
    catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    _break_item(catalog, "S1A_desc117_pre_old", "no-datetime")
    out = tmp_path / "out"
    lines = _cli(_fetch_args(catalog, out), capsys, monkeypatch, code=0)
    warned = [line for line in lines if line.startswith("warning: ")]
    assert len(warned) == 1 and "S1A_desc117_pre_old.json (no datetime)" in warned[0], lines
    assert (out / "pre.tif").is_file() and (out / "post.tif").is_file()
    info = json.loads((out / "fetch.json").read_text())
    assert info["catalog"] == str(catalog.resolve())  # absolute, whatever the user typed


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--date", "9999-12-31"], "leaves the calendar"),
        (["--date", "0001-01-01"], "leaves the calendar"),
        (["--pre-days", "1000000"], "leaves the calendar"),
        (["--resolution", "0"], "--resolution must be a positive number of metres, got 0.0"),
        (["--resolution", "-10"], "--resolution must be a positive number of metres, got -10.0"),
        (["--resolution", "nan"], "--resolution must be a positive number of metres, got nan"),
    ],
)
def test_fetch_bad_dates_and_resolution_before_any_search(
    flags: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    out = tmp_path / "out"
    # the catalog is not there: an option error must come before the catalog is even opened
    line = _one_error([*_fetch_args(tmp_path / "no-catalog", out), *flags], capsys, monkeypatch)
    assert expected in line
    assert not out.exists()


def test_fetch_assets_without_georeferencing(
    catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import rasterio

    data = tmp_path / "nocrs"
    data.mkdir()
    for path in catalog.parent.glob("sentinel-1-rtc/*/*.json"):
        item = json.loads(path.read_text())
        for asset in item["assets"].values():
            src = Path(asset["href"])
            with rasterio.open(src) as ds:
                band = ds.read()
            _, h, w = band.shape
            with rasterio.open(data / src.name, "w", driver="GTiff", width=w, height=h, count=1,
                               dtype="float32") as ds:  # fmt: skip
                ds.write(band)
            asset["href"] = str(data / src.name)
        path.write_text(json.dumps(item))
    line = _one_error(_fetch_args(catalog, tmp_path / "out"), capsys, monkeypatch)
    assert "is not georeferenced (no CRS)" in line and "no valid pixels" not in line


# ---- map -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def map_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tests.inference_helpers import make_run

    torch.manual_seed(0)
    return make_run(tmp_path_factory.mktemp("map-run") / "run", views=("pre", "post"), crop=32)


def _map_args(catalog: Path, run: Path | None, out: Path, *extra: str) -> list[str]:
    model = ["--model", str(run)] if run is not None else []
    return ["map", "--bbox", BBOX_TEXT, "--date", DATE.isoformat(), *model, "--catalog", str(catalog),
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


@pytest.mark.parametrize("name", ["../../x.gpkg", "/ABS/x.gpkg", "sub/x.gpkg", "..", ".x.gpkg"])
def test_map_polygons_must_be_a_bare_name(
    name: str, catalog: Path, map_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    work = tmp_path / "work"
    out = work / "a" / "b" / "map"
    name = name.replace("/ABS", str(tmp_path / "abs"))
    before = _files(tmp_path)
    line = _one_error([*_map_args(catalog, map_run, out), "--polygons", name], capsys, monkeypatch)
    assert f"--polygons {name!r}: give a bare file name" in line
    assert _files(tmp_path) == before  # nothing fetched, nothing written anywhere


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--model", "MISSING"], "no such run directory"),
        (["--model", "NOT_A_RUN"], "not a floodlora run directory (config.yaml is missing)"),
        (["--polygons", "flood.txt"], "polygons are written as .gpkg, .geojson, .fgb or .shp"),
        (["--threshold", "1.5"], "--threshold must be in (0, 1), got 1.5"),
        (["--threshold", "nan"], "--threshold must be in (0, 1), got nan"),
        (["--simplify", "-1"], "--simplify must be >= 0 metres, got -1.0"),
        (["--simplify", "nan"], "--simplify must be >= 0 metres, got nan"),
        (["--min-area", "-5"], "--min-area must be >= 0 m2, got -5.0"),
        (["--date", "9999-12-31"], "leaves the calendar"),
    ],
)
def test_map_checks_every_argument_before_the_download(
    flags: list[str],
    expected: str,
    catalog: Path,
    map_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch,
) -> None:
    (tmp_path / "NOT_A_RUN").mkdir()
    flags = [str(tmp_path / f) if f in ("MISSING", "NOT_A_RUN") else f for f in flags]
    out = tmp_path / "map"
    line = _one_error([*_map_args(catalog, map_run, out), *flags], capsys, monkeypatch)
    assert expected in line
    assert not out.exists()  # no OUT/scenes/ left from a download that was bound to fail


def test_map_records_the_catalog_as_an_absolute_path(
    catalog: Path, map_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(catalog.parent.parent)
    out = tmp_path / "map"
    args = _map_args(Path("stac") / "catalog.json", map_run, out, "--threshold", "0.3")
    lines = _cli(args, capsys, monkeypatch, code=0)
    assert not [line for line in lines if line.startswith("warning: ")], lines
    summary = json.loads((out / "summary.json").read_text())
    fetched = json.loads((out / "scenes" / "fetch.json").read_text())
    assert summary["catalog"] == fetched["catalog"] == str(catalog.resolve())


# ---- adapt ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapt_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small trained run and three labelled chips of 64 px (calibration takes seconds)."""
    from tests.inference_helpers import make_run

    from floodlora.data.synthetic import write_folder_dataset

    root = tmp_path_factory.mktemp("adapt")
    run = make_run(root / "run", crop=32)
    chips = root / "chips"
    write_folder_dataset(chips, 3, 64, seed=0, splits={"chips": 1.0})
    return run, chips


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lr", "nan"], "adapt: lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "adapt: lr must be a finite number > 0, got inf"),
        (["--max-minutes", "nan"], "adapt: max minutes must be a finite number > 0, got nan"),
    ],
)
def test_adapt_refuses_non_finite_numbers(
    flags: list[str],
    expected: str,
    adapt_inputs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch,
) -> None:
    run, chips = adapt_inputs
    out = tmp_path / "new"
    line = _one_error(
        ["adapt", str(run), "--data", str(chips), "--out", str(out), *flags], capsys, monkeypatch
    )
    assert expected in line
    assert not out.exists()


def test_a_failed_adapt_leaves_no_folder_that_blocks_the_rerun(
    adapt_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from floodlora.errors import DataError
    from floodlora.training import adapt as adapt_module

    run, chips = adapt_inputs
    out = tmp_path / "new"
    args = ["adapt", str(run), "--data", str(chips), "--out", str(out), "--no-progress"]

    def fails_midway(origin, cfg, out_dir: Path, *args, **kwargs):  # what a run writes before it fails
        (out_dir / "logs").mkdir(parents=True)
        (out_dir / "config.yaml").write_text("data: {}\n")
        raise DataError("chip r3: unreadable (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(adapt_module, "_calibrate_only", fails_midway)
        line = _one_error(args, capsys, monkeypatch)
    assert "unreadable (simulated)" in line and not out.exists()
    out.mkdir()  # an empty folder made by the user stays, emptied
    with monkeypatch.context() as patch:
        patch.setattr(adapt_module, "_calibrate_only", fails_midway)
        _one_error(args, capsys, monkeypatch)
    assert out.is_dir() and not list(out.iterdir())
    _cli(args, capsys, monkeypatch, code=0)
    assert (out / "adapt.json").is_file()


def test_an_interrupted_adapt_run_is_named_and_replaced_with_overwrite(
    adapt_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    run, chips = adapt_inputs
    out = tmp_path / "new"
    (out / "logs").mkdir(parents=True)  # what a run killed with SIGKILL leaves
    (out / "config.yaml").write_text("data: {}\n")
    args = ["adapt", str(run), "--data", str(chips), "--out", str(out), "--no-progress"]
    line = _one_error(args, capsys, monkeypatch)
    assert "holds an interrupted adapt run (no adapt.json); pass --overwrite to replace it" in line
    _cli([*args, "--overwrite"], capsys, monkeypatch, code=0)
    assert (out / "adapt.json").is_file()
    line = _one_error(args, capsys, monkeypatch)
    assert "already holds a run; pass --overwrite" in line
    other = tmp_path / "photos"  # --overwrite never empties a folder that is not a run
    other.mkdir()
    (other / "a.jpg").write_text("x")
    line = _one_error(["adapt", str(run), "--data", str(chips), "--out", str(other), "--overwrite"],
                      capsys, monkeypatch)  # fmt: skip
    assert "already exists and is not empty" in line and (other / "a.jpg").is_file()


def test_the_domain_shift_warning_during_adapt_does_not_advise_adapt(
    adapt_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    run, chips = adapt_inputs
    eight_bit = tmp_path / "run8"
    shutil.copytree(run, eight_bit)
    preset = {"name": "ombria-stats", "units": "scaled-uint8", "mean": {"vv": 90.0, "vh": 60.0},
              "std": {"vv": 30.0, "vh": 25.0}}  # fmt: skip
    (eight_bit / "normalization.json").write_text(json.dumps({"ombria": preset}))
    args = ["adapt", str(eight_bit), "--data", str(chips), "--out", str(tmp_path / "new"), "--no-progress"]
    lines = _cli(args, capsys, monkeypatch, code=0)
    warned = [line for line in lines if line.startswith("warning: ")]
    assert warned and all("domain shift" in w for w in warned), lines
    assert not any("floodlora adapt" in w for w in warned)
    assert "the operating point is now set on these labelled chips" in warned[0]


# ---- labels --------------------------------------------------------------------------------------


def _polygon_layer(path: Path, layer: str, boxes: list[tuple[int, int, int, int]]) -> None:
    """Add a layer of polygons (rows r0..r1, cols c0..c1 of the 64 x 64 test scene) to a vector file."""
    import shapely
    from rasterio.crs import CRS

    x0, y0, res = 500000.0, 5000000.0, 10.0
    geoms = [
        shapely.box(x0 + c0 * res, y0 - r1 * res, x0 + c1 * res, y0 - r0 * res) for r0, r1, c0, c1 in boxes
    ]
    pyogrio.raw.write(
        path, np.array(shapely.to_wkb(geoms), dtype=object), [np.arange(len(geoms), dtype=np.int32)], ["id"],
        layer=layer, geometry_type="Polygon", crs=CRS.from_epsg(32633).to_wkt(), append=path.exists(),
    )  # fmt: skip


@pytest.fixture()
def labelling(tmp_path: Path) -> tuple[Path, Path]:
    """A post-event scene and the GeoPackage of the README's workflow: `suggest` wrote the
    suggested_tiles layer, the responder then added a flood layer in QGIS."""
    from tests.inference_helpers import db_scene, write_scene

    scene = write_scene(tmp_path / "post.tif", db_scene(64, 64, seed=4))
    tiles = tmp_path / "tiles.gpkg"
    _polygon_layer(tiles, "suggested_tiles", [(0, 64, 0, 64)])  # the whole scene
    _polygon_layer(tiles, "flood", [(10, 30, 20, 40)])
    return scene, tiles


def test_labels_refuses_a_multi_layer_file_without_a_layer(
    labelling: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    scene, tiles = labelling
    out = tmp_path / "chips"
    args = ["labels", "--scene", str(scene), "--flood", str(tiles), "--aoi", f"{tiles}:suggested_tiles",
            "--out", str(out), "--chip-size", "32"]  # fmt: skip
    line = _one_error(args, capsys, monkeypatch)
    assert (
        f"--flood {tiles}: holds 2 layers (suggested_tiles, flood); name one as --flood {tiles}:LAYER" in line
    )
    assert not out.exists()
    bad = [*args[:4], f"{tiles}:flod", *args[5:]]
    line = _one_error(bad, capsys, monkeypatch)
    assert "no layer 'flod' there (layers: suggested_tiles, flood)" in line and not out.exists()


def test_labels_reads_the_layer_named_file_colon_layer(
    labelling: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import rasterio

    scene, tiles = labelling
    out = tmp_path / "chips"
    args = ["labels", "--scene", str(scene), "--flood", f"{tiles}:flood", "--aoi", f"{tiles}:suggested_tiles",
            "--out", str(out), "--chip-size", "32", "--date", "2024-11-01"]  # fmt: skip
    lines = _cli(args, capsys, monkeypatch, code=0)
    assert not [line for line in lines if line.startswith("warning: ")], lines
    labels = json.loads((out / "labels.json").read_text())
    assert labels["flood_pixels"] == 20 * 20 and labels["dry_pixels"] == 64 * 64 - 20 * 20
    assert labels["flood"] == f"{tiles}:flood"
    with rasterio.open(out / "chips" / "post-r00000-c00000" / "mask.tif") as ds:
        assert sorted(np.unique(ds.read(1)).tolist()) == [0, 1]


@pytest.mark.parametrize("date", ["next tuesday", "2024-13-01", "01/11/2024"])
def test_labels_refuses_a_date_it_cannot_read(
    date: str, labelling: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    scene, tiles = labelling
    out = tmp_path / "chips"
    args = ["labels", "--scene", str(scene), "--flood", f"{tiles}:flood", "--out", str(out), "--date", date]
    line = _one_error(args, capsys, monkeypatch)
    assert f"--date {date!r}: expected an ISO date such as 2024-10-30" in line
    assert not out.exists()


# ---- suggest -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suggest_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.inference_helpers import db_scene, make_run, write_scene

    root = tmp_path_factory.mktemp("suggest")
    return make_run(root / "run", crop=32), write_scene(root / "post.tif", db_scene(64, 64, seed=2))


def test_a_failed_suggest_leaves_no_scratch_files(
    suggest_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    run, _ = suggest_inputs
    bad = tmp_path / "post-not-a-raster.tif"
    bad.write_text("not a GeoTIFF")
    out = tmp_path / "labelling" / "tiles.gpkg"
    before = _files(tmp_path)
    _one_error(["suggest", str(run), "--view", f"post={bad}", "--out", str(out), "--no-progress"],
               capsys, monkeypatch)  # fmt: skip
    assert _files(tmp_path) == before  # no scratch beside --out; the system temp dir is checked too


def test_suggest_sweeps_the_scratch_of_a_killed_run(
    suggest_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A SIGKILLed suggest leaves its whole-scene scratch beside --out; the next run removes it."""
    import os
    import signal
    import subprocess
    import sys

    run, post = suggest_inputs
    out = tmp_path / "tiles.gpkg"
    code = (
        "import os, signal\n"
        "from floodlora.io import scratch_dir\n"
        f"d = scratch_dir({str(out)!r}, '.d'); (d / 'spread.tif').write_bytes(b'0' * 1000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == -signal.SIGKILL
    (stale,) = [p for p in tmp_path.iterdir() if p.name.startswith(".tiles.gpkg.")]
    assert (stale / "spread.tif").is_file()
    args = ["suggest", str(run), "--view", f"post={post}", "--out", str(out), "--n", "2", "--size", "32",
            "--no-progress"]  # fmt: skip
    from floodlora.inference import predict

    written: list[Path] = []
    real = predict.predict_run

    def spy(run_dir, views, out_path, **kwargs):  # where the whole-scene layers go
        written.extend(Path(p) for p in (out_path, kwargs.get("uncertainty")) if p is not None)
        return real(run_dir, views, out_path, **kwargs)

    monkeypatch.setattr(predict, "predict_run", spy)
    lines = _cli(args, capsys, monkeypatch, code=0)
    assert any("2 of" in line for line in lines), lines
    assert len(written) == 2 and all(p.parent.parent == tmp_path for p in written)  # beside --out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "system-tmp") == ["tiles.gpkg"]
