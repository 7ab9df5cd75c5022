"""floodlora fetch, offline: a static STAC catalog with local COGs written by the test."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pystac")
pytest.importorskip("pystac_client")

from tests.fetch_helpers import BBOX, DATE, make_catalog

from floodlora.data.fetch import FetchError, FetchOptions, fetch_scenes


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("stac"))


def _opts(catalog: Path | str, **kw: object) -> FetchOptions:
    return dataclasses.replace(FetchOptions(bbox=BBOX, date=DATE, catalog=str(catalog)), **kw)


def _read(path: Path) -> tuple[np.ndarray, dict]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(), {"crs": ds.crs.to_string(), "transform": ds.transform, "shape": ds.shape,
                           "descriptions": ds.descriptions, "bounds": ds.bounds}  # fmt: skip


def test_fetch_picks_mosaics_and_aligns(catalog: Path, tmp_path: Path) -> None:
    from rasterio.warp import transform_bounds

    res = fetch_scenes(_opts(catalog), tmp_path / "out")
    info = json.loads((tmp_path / "out" / "fetch.json").read_text())
    assert [i["id"] for i in info["post"]["items"]] == ["S1A_desc117_post_north", "S1A_desc117_post_south"]
    assert [i["id"] for i in info["pre"]["items"]] == ["S1A_desc117_pre"]
    assert info["post"]["relative_orbit"] == info["pre"]["relative_orbit"] == 117
    assert info["post"]["orbit_state"] == info["pre"]["orbit_state"] == "descending"
    assert info["crs"] == "EPSG:32633" and info["units"] == "db" and info["bbox"] == list(BBOX)
    assert info["post"]["items"][0]["hrefs"]["vv"].endswith("S1A_desc117_post_north_vv.tif")
    assert res.messages == []  # both scenes fully valid in the bbox

    post, meta = _read(res.post)
    pre, meta_pre = _read(res.pre)
    assert meta == meta_pre and meta["descriptions"] == ("VV", "VH") and meta["crs"] == "EPSG:32633"
    assert meta["transform"].a == 10.0 and meta["transform"].c % 10 == 0 and meta["transform"].f % 10 == 0
    b = transform_bounds("EPSG:4326", "EPSG:32633", *BBOX, densify_pts=21)
    assert meta["bounds"].left <= b[0] and meta["bounds"].right >= b[2]
    assert meta["bounds"].bottom <= b[1] and meta["bounds"].top >= b[3]
    assert meta["bounds"].right - meta["bounds"].left < (b[2] - b[0]) + 20  # only the bbox was read
    # dB of the items' linear power; pre: one item everywhere; post: north slice then south slice
    assert np.isfinite(post).all() and np.isfinite(pre).all()
    np.testing.assert_allclose(pre[0], 10 * math.log10(0.05), atol=1e-4)
    np.testing.assert_allclose(pre[1], 10 * math.log10(0.01), atol=1e-4)
    north, south = 10 * math.log10(0.02), 10 * math.log10(0.03)
    assert np.allclose(post[0, :5], north, atol=1e-4) and np.allclose(post[0, -5:], south, atol=1e-4)
    assert post[0].min() >= north - 1e-4 and post[0].max() <= south + 1e-4  # no nodata blended in
    np.testing.assert_allclose(post[1] - post[0], 10 * math.log10(0.2), atol=1e-4)


def test_fetch_errors_say_what_was_searched(catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(
        FetchError, match=r"no Sentinel-1 item found in collection 'sentinel-1-rtc'.*2025-03-01"
    ):
        fetch_scenes(_opts(catalog, date=DATE.replace(year=2025, month=3, day=1)), tmp_path / "a")
    with pytest.raises(FetchError, match=r"covers the whole bbox: the best.*covers \d+%"):
        fetch_scenes(_opts(catalog, bbox=(15.0, 45.0, 15.1, 45.05)), tmp_path / "b")
    with pytest.raises(FetchError, match=r"no pre-event acquisition.*relative orbit 117, descending"):
        fetch_scenes(_opts(catalog, pre_days=8), tmp_path / "c")
    with pytest.raises(FetchError, match="no STAC catalog"):
        fetch_scenes(_opts(tmp_path / "nowhere"), tmp_path / "d")
    with pytest.raises(FetchError, match="no items of collection 'grd'"):
        fetch_scenes(_opts(catalog, collection="grd"), tmp_path / "e")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_unreachable_api_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"cannot reach the STAC API at http://127\.0\.0\.1:9/stac"):
        fetch_scenes(_opts("http://127.0.0.1:9/stac"), tmp_path / "out")


def test_refused_asset_url_is_reported_as_unsigned(tmp_path: Path) -> None:
    """Assets behind a local HTTP server that answers 403, as an expired signature does."""
    import http.server
    import threading

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cat = make_catalog(tmp_path / "remote", href_base=f"http://127.0.0.1:{server.server_port}/data")
        with pytest.raises(FetchError, match=r"refused .*unsigned or expired URL"):
            fetch_scenes(_opts(cat), tmp_path / "out")
    finally:
        server.shutdown()


def test_cli_fetch(catalog: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from floodlora import cli

    bbox = ",".join(str(v) for v in BBOX)
    args = ["fetch", "--bbox", bbox, "--date", DATE.isoformat(), "--catalog", str(catalog),
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "post: 2024-11-01T05:10Z, relative orbit 117, descending" in result.output
    assert (tmp_path / "out" / "pre.tif").is_file() and (tmp_path / "out" / "fetch.json").is_file()
    bad = CliRunner().invoke(cli.app, ["fetch", "--bbox", "15,45,14,46", "--date", "2024-10-30",
                                       "--out", str(tmp_path / "x")])  # fmt: skip
    assert bad.exit_code != 0 and "W < E" in str(bad.exception)
