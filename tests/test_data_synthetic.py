"""The scene simulator: determinism, plausible sigma0 per class, speed, and the folder round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from floodlora.data.sources import detect_format, discover, read_sample
from floodlora.data.synthetic import generate_scene, utm_forward, write_folder_dataset


def test_deterministic_per_seed() -> None:
    a, b = generate_scene(64, seed=5), generate_scene(64, seed=5)
    c = generate_scene(64, seed=6)
    np.testing.assert_array_equal(a.views["post"]["vv"], b.views["post"]["vv"])
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.views["post"]["vv"], c.views["post"]["vv"])
    assert a.meta == b.meta


def test_scene_contract_and_physics() -> None:
    s = generate_scene(128, seed=2, views=("pre_asc", "pre_desc", "post_asc", "post_desc"))
    assert set(s.views) == {"pre_asc", "pre_desc", "post_asc", "post_desc"}
    assert s.meta.units == "db" and s.meta.event == "synthetic-in" and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask)) <= {0, 1, 255}
    flood = s.mask == 1
    assert 0.03 < flood.mean() < 0.5
    post, pre = s.views["post_asc"], s.views["pre_asc"]
    # flooded pixels darken after the flood, dry land does not
    assert np.nanmedian(post["vv"][flood]) < np.nanmedian(pre["vv"][flood]) - 3
    assert abs(np.nanmedian(post["vv"][s.mask == 0]) - np.nanmedian(pre["vv"][s.mask == 0])) < 1.5
    # VH below VV on land; values within Sentinel-1's range
    dry = s.mask == 0
    assert np.nanmedian(post["vh"][dry]) < np.nanmedian(post["vv"][dry]) - 4
    assert np.nanmin(post["vv"]) > -45 and np.nanmax(post["vv"]) < 25
    # ascending and descending differ (geometry), but describe the same ground
    assert not np.allclose(s.views["post_asc"]["vv"], s.views["post_desc"]["vv"], equal_nan=True)


def test_speckle_statistics() -> None:
    """Speckle is Gamma with ENL ~4.4: in linear power std/mean of a homogeneous area ~ 1/sqrt(4.4)."""
    from floodlora.data.synthetic import _speckle

    lin = 10 ** (_speckle(np.random.default_rng(0), np.full((256, 256), -10.0, np.float32)) / 10)
    assert lin.std() / lin.mean() == pytest.approx(1 / np.sqrt(4.4), rel=0.05)


def test_not_separable_by_one_threshold() -> None:
    """Best single post-VV threshold stays well below perfect (speckle, flooded vegetation, lookalikes)."""
    for domain in ("in", "ood"):
        s = generate_scene(128, domain, seed=1)
        vv, m = s.views["post"]["vv"], s.mask
        ok = (m != 255) & np.isfinite(vv)
        best = max(((vv < t) == (m == 1))[ok].mean() for t in np.arange(-25, -5, 0.5))
        assert best < 0.97


def test_ood_domain_shifts_statistics() -> None:
    ins = [generate_scene(64, "in", seed=k) for k in range(6)]
    ood = [generate_scene(64, "ood", seed=k) for k in range(6)]
    assert ood[0].meta.event == "synthetic-ood-0" and ood[3].meta.event == "synthetic-ood-3"
    assert (
        np.mean([s.meta.extra["theta_asc"] for s in ood])
        < np.mean([s.meta.extra["theta_asc"] for s in ins]) - 5
    )
    assert np.mean([s.meta.lat for s in ood]) < 32 < np.mean([s.meta.lat for s in ins])


def test_utm_forward_matches_proj() -> None:
    from rasterio.crs import CRS
    from rasterio.warp import transform

    for lat, lon in [(48.5, 12.1), (27.3, 68.9), (-24.9, -57.0)]:
        epsg, x, y = utm_forward(lat, lon)
        xs, ys = transform(CRS.from_epsg(4326), CRS.from_epsg(epsg), [lon], [lat])
        assert x == pytest.approx(xs[0], abs=0.01) and y == pytest.approx(ys[0], abs=0.01)


def test_round_trip_through_folder_reader(tmp_path: Path) -> None:
    counts = write_folder_dataset(tmp_path / "syn", n=10, size=64, domain="ood", seed=4)
    assert counts == {"train": 8, "val": 1, "test": 1}  # its time budget: benchmarks/budgets.py
    assert detect_format(tmp_path / "syn") == "folder"
    refs = discover([tmp_path / "syn"])
    assert [r.split for r in refs].count("train") == 8 and {r.event for r in refs} == {"synthetic-ood-4"}
    ref = next(r for r in refs if r.chip_id == "syn-ood-s4-0003")
    got = read_sample(ref)
    want = generate_scene(64, "ood", 4 * 100003 + 3)
    assert got.meta.crs == want.meta.crs and got.meta.transform == want.meta.transform
    assert "UTM zone" in got.meta.crs
    assert got.meta.date == want.meta.date and got.meta.lat == pytest.approx(want.meta.lat)
    for view in ("pre", "post"):
        for band in ("vv", "vh"):
            np.testing.assert_array_equal(got.views[view][band], want.views[view][band])
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_array_equal(got.valid, want.valid)
