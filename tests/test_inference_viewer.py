"""The offline web map: opened from disk in headless Chromium, the flood is drawn where it is, and
the page requests nothing from the network."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyogrio")

from tests.inference_helpers import write_scene

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
H, W = 160, 200
FLOOD = (slice(20, 70), slice(30, 90))  # rows, cols of the flooded rectangle (upper left)
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 4985000.0)  # UTM 33N on its central meridian, ~45 N


def _write_mask(path: Path) -> None:
    import rasterio
    from rasterio.transform import Affine

    mask = np.zeros((H, W), dtype=np.uint8)
    mask[FLOOD] = 1
    mask[:, -8:] = 255
    profile = {"driver": "COG", "height": H, "width": W, "count": 1, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(*TRANSFORM), "nodata": 255}  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(mask[None])


def _map_folder(out: Path) -> dict[str, Any]:
    """A `map` folder as run_map leaves it (post scene, mask, polygons), without running a model."""
    from floodlora.inference.vector import write_polygons

    (out / "scenes").mkdir(parents=True)
    rng = np.random.default_rng(0)
    vv = rng.normal(-9.0, 1.5, (H, W)).astype(np.float32)
    vv[FLOOD] = -22.0
    vv[:, -8:] = np.nan
    write_scene(out / "scenes" / "post.tif", np.stack([vv, vv - 6]), transform=TRANSFORM)
    _write_mask(out / "flood.tif")
    polys = write_polygons(out / "flood.tif", out / "flood.gpkg")
    return {
        "date": "2024-10-30",
        "flooded_km2": polys.area_km2,
        "polygons": polys.count,
        "threshold": 0.5,
        "files": {"post": "scenes/post.tif", "mask": "flood.tif", "polygons": "flood.gpkg"},
    }


def test_viewer_files_are_self_contained(tmp_path: Path) -> None:
    from floodlora.inference.viewer import write_viewer

    summary = _map_folder(tmp_path / "map")
    page = write_viewer(tmp_path / "map", summary)
    html = page.read_text()
    assert "http://" not in html and "https://" not in html
    for rel in ("lib/leaflet/leaflet.js", "lib/leaflet/leaflet.css", "lib/leaflet/LICENSE",
                "viewer/post.png", "viewer/classes.png", "viewer/data.js"):  # fmt: skip
        assert (tmp_path / "map" / rel).is_file(), rel
    data = (tmp_path / "map" / "viewer" / "data.js").read_text()
    assert "http" not in data and '"area_km2"' in data and "flood (new water)" in data


class _DevTools:
    """Chromium driven over the DevTools protocol on a pipe (stdlib only, no websocket client).

    Why not a proxy: Chromium itself talks to Google services (time, sign-in) on its own; the
    protocol's Network events of the page's target name exactly what the page requested.
    """

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # chromium reads commands on fd 3 and answers on fd 4 (kept: pass_fds)
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-extensions", f"--user-data-dir={profile}",
                "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, preexec_fn=fds, pass_fds=(3, 4, to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "HOME": str(profile)},
        )  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _open_and_shoot(page: Path, png: Path, profile: Path) -> list[str]:
    """Load `page` from disk at 900 x 900, wait for Leaflet and the overlays, save a screenshot.

    Returns every URL the page requested (documents, scripts, images, fetches).
    """
    chrome = _DevTools(profile)
    try:
        target = chrome.send("Target.createTarget", url="about:blank")["targetId"]
        session = chrome.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        chrome.send("Network.enable", session)
        chrome.send("Page.enable", session)
        chrome.send("Emulation.setDeviceMetricsOverride", session, width=900, height=900,
                    deviceScaleFactor=1, mobile=False)  # fmt: skip
        chrome.send("Page.navigate", session, url=page.resolve().as_uri())
        ready = "window.FLOODLORA_READY === true && Array.from(document.images).every(i => i.complete)"
        deadline = time.monotonic() + 60
        while not chrome.send("Runtime.evaluate", session, expression=ready)["result"].get("value"):
            assert time.monotonic() < deadline, "the page never became ready"
            time.sleep(0.2)
        time.sleep(0.5)  # let the canvas renderer draw the polygons
        shot = chrome.send("Page.captureScreenshot", session, format="png")
        png.write_bytes(base64.b64decode(shot["data"]))
    finally:
        chrome.close()
    return [
        e["params"]["request"]["url"]
        for e in chrome.events
        if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session
    ]


def _extent(grey: np.ndarray) -> tuple[int, int, int, int]:
    """Screen rows/cols where the post-event image lies: most of a row or column is grey there."""
    rows = np.flatnonzero(grey.mean(axis=1) > 0.3)
    cols = np.flatnonzero(grey.mean(axis=0) > 0.3)
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
)
def test_viewer_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    from floodlora.inference.viewer import write_viewer

    summary = _map_folder(tmp_path / "map")
    page = write_viewer(tmp_path / "map", summary)
    urls = _open_and_shoot(page, tmp_path / "shot.png", tmp_path / "profile")
    assert any(u.endswith("/index.html") for u in urls) and any(u.endswith("classes.png") for u in urls)
    external = [u for u in urls if not u.startswith("file://")]
    assert external == [], f"the page requested URLs outside its folder: {external}"

    rgb = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    blue = (b - r > 80) & (b - g > 40)
    background = (np.abs(rgb - np.array([236, 234, 228])).sum(axis=2) < 6) | (rgb.min(axis=2) > 245)
    grey = (np.abs(r - g) < 6) & (np.abs(g - b) < 6) & ~background
    top, bottom, left, right = _extent(grey)
    # The mask's columns W-8.. are nodata (transparent, no image): the image spans W-8 columns.
    sy, sx = (bottom - top) / H, (right - left) / (W - 8)
    assert abs(sy / sx - 1) < 0.05, f"overlay stretched: {sy:.2f} x {sx:.2f} screen px per pixel"

    def screen(rows: slice, cols: slice, shrink: float = 0.0) -> tuple[slice, slice]:
        dr, dc = shrink * (rows.stop - rows.start), shrink * (cols.stop - cols.start)
        return (
            slice(int(top + (rows.start + dr) * sy), int(top + (rows.stop - dr) * sy)),
            slice(int(left + (cols.start + dc) * sx), int(left + (cols.stop - dc) * sx)),
        )

    inside = blue[screen(*FLOOD, shrink=0.15)]
    assert inside.mean() > 0.9, f"only {inside.mean():.0%} of the flood's screen pixels are blue"
    east_of_flood = blue[screen(slice(25, 65), slice(100, 150))]
    south_of_flood = blue[screen(slice(85, 125), slice(30, 130))]
    assert east_of_flood.mean() < 0.01 and south_of_flood.mean() < 0.01
    assert grey[screen(slice(85, 125), slice(30, 130))].mean() > 0.9  # the post-event image is there
