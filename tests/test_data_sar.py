"""SAR preprocessing: dB edge cases, presets and `auto`, streamed statistics, speckle filters."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from floodlora.data.sample import Sample, SampleMeta
from floodlora.data.sar import (
    PRESETS,
    compute_stats,
    get_preset,
    lee_filter,
    normalize_sample,
    refined_lee_filter,
    save_stats,
    to_db,
    to_linear,
)
from floodlora.errors import ConfigError


def test_to_db_edge_cases() -> None:
    x = np.array([1.0, 0.1, 0.0, -1.0, np.nan, np.inf, 1e-30, -9999.0], dtype=np.float32)
    db = to_db(x, nodata=-9999.0)
    assert db.dtype == np.float32
    assert db[0] == 0.0 and db[1] == pytest.approx(-10.0)
    assert np.isnan(db[2:6]).all() and np.isnan(db[7])  # <= 0, NaN, inf, nodata -> NaN, never -inf
    assert db[6] == pytest.approx(-300.0)


def test_to_linear_edge_cases_and_round_trip() -> None:
    db = np.array([-20.0, 0.0, 10.0, np.nan, -np.inf, 255.0], dtype=np.float32)
    lin = to_linear(db, nodata=255.0)
    assert lin[:3] == pytest.approx([0.01, 1.0, 10.0])
    assert np.isnan(lin[3:]).all()
    x = np.array([0.001, 0.05, 3.0], dtype=np.float32)
    assert to_linear(to_db(x)) == pytest.approx(x, rel=1e-5)


def _sample(units: str, vv: float, vh: float | None = None) -> Sample:
    bands = {"vv": np.full((8, 8), vv, np.float32)}
    if vh is not None:
        bands["vh"] = np.full((8, 8), vh, np.float32)
    bands["vv"][0, 0] = np.nan
    return Sample({"post": bands}, np.zeros((8, 8), np.uint8), SampleMeta("c", "e", "test", units))


def _clay_facts_s1() -> dict[str, dict[str, float]]:
    """Clay v1.5's Sentinel-1 mean / std as ../shared/reference/clay-facts.md states them (bold)."""
    from conftest import SHARED

    facts = SHARED / "reference" / "clay-facts.md"
    if not facts.is_file():
        pytest.skip(f"{facts} not found (set FLOODLORA_SHARED)")
    out = {}
    for line in facts.read_text().splitlines():
        for key in ("mean", "std"):
            if line.startswith(f"| {key} vv / vh |"):
                vv, vh = (float(x) for x in re.findall(r"\*\*(-?[\d.]+) / (-?[\d.]+)\*\*", line)[0])
                out[key] = {"vv": vv, "vh": vh}
    assert set(out) == {"mean", "std"}, "clay-facts.md changed its Sentinel-1 table"
    return out


def test_auto_db_uses_clay_v15_constants() -> None:
    preset = get_preset("auto", "db")
    facts = _clay_facts_s1()
    assert preset.mean == facts["mean"] and preset.std == facts["std"]
    out = normalize_sample(_sample("db", -12.113 + 8.314, -18.673), ["vv", "vh"], preset)
    assert out["post"].shape == (2, 8, 8)
    assert out["post"][0, 1, 1] == pytest.approx(1.0) and out["post"][1, 1, 1] == pytest.approx(0.0)
    assert out["post"][0, 0, 0] == 0.0  # nodata -> 0 (the mean), never NaN


def test_auto_linear_converts_to_db_first() -> None:
    preset = get_preset("auto", "linear")
    assert preset.name == "clay-v1.5"
    out = normalize_sample(_sample("linear", 0.1), ["vv", "vh"], preset)
    assert out["post"][0, 1, 1] == pytest.approx((-10.0 + 12.113) / 8.314, abs=1e-5)
    assert np.all(out["post"][1] == 0.0)  # missing band -> zero channel


def test_clay_v1_linear_preset_converts_db() -> None:
    out = normalize_sample(_sample("db", 0.0), ["vv"], PRESETS["clay-v1"])
    assert out["post"][0, 1, 1] == pytest.approx((1.0 - 0.123273) / 1.492154, rel=1e-5)


def test_scaled_uint8_needs_stats() -> None:
    with pytest.raises(ConfigError, match="scaled-uint8"):
        get_preset("auto", "scaled-uint8")
    with pytest.raises(ConfigError, match=r"expects db values but the data are scaled-uint8"):
        get_preset("clay-v1.5", "scaled-uint8")
    stats = {"units": "scaled-uint8", "bands": {"vv": {"mean": 100.0, "std": 20.0}}}
    preset = get_preset("auto", "scaled-uint8", stats)
    out = normalize_sample(_sample("scaled-uint8", 140.0), ["vv"], preset)
    assert out["post"][0, 1, 1] == pytest.approx(2.0)


def test_compute_stats_streams_and_saves(tmp_path: Path) -> None:
    from floodlora.data.sources import discover
    from floodlora.data.synthetic import write_folder_dataset

    write_folder_dataset(tmp_path / "ds", n=3, size=32, seed=1, splits={"train": 1.0})
    refs = discover([tmp_path / "ds"])
    stats = compute_stats(refs)
    assert stats["units"] == "db" and stats["n_chips"] == 3 and stats["events"] == ["synthetic-in"]
    # reference: all valid pixels of every view pooled, computed directly
    from floodlora.data.sources import read_sample

    vals = np.concatenate(
        [read_sample(r).views[v]["vv"][read_sample(r).valid] for r in refs for v in ("pre", "post")]
    )
    assert stats["bands"]["vv"]["mean"] == pytest.approx(float(vals.mean()), abs=1e-4)
    assert stats["bands"]["vv"]["std"] == pytest.approx(float(vals.std()), abs=1e-4)
    assert stats["bands"]["vv"]["count"] == vals.size
    save_stats(stats, tmp_path / "stats.yaml")
    preset = get_preset(str(tmp_path / "stats.yaml"), "db")
    assert preset.mean["vh"] == stats["bands"]["vh"]["mean"]
    assert get_preset(str(tmp_path / "stats.yaml"), "linear").units == "db"  # linear data gets converted


def test_stats_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        get_preset(str(tmp_path / "missing.yaml"), "db")
    (tmp_path / "bad.yaml").write_text("a: 1\n")
    with pytest.raises(ConfigError, match="not a floodlora stats file"):
        get_preset(str(tmp_path / "bad.yaml"), "db")


def test_lee_filters_reduce_speckle_keep_mean_and_edges() -> None:
    rng = np.random.default_rng(0)
    truth = np.full((64, 64), 0.1, np.float32)
    truth[:, 32:] = 0.005  # a shoreline: land | water
    noisy = truth * rng.gamma(4.4, 1 / 4.4, truth.shape).astype(np.float32)
    noisy[5, 5] = np.nan
    for f in (lee_filter(noisy), refined_lee_filter(noisy)):
        assert (
            f.dtype == np.float32
            and np.isnan(f[5, 5])
            and np.isfinite(np.delete(f.ravel(), 5 * 64 + 5)).all()
        )
        land = f[8:56, 4:24]
        assert land.std() < 0.6 * noisy[8:56, 4:24].std()  # speckle reduced
        assert land.mean() == pytest.approx(0.1, rel=0.1)  # radiometry preserved
    ref = refined_lee_filter(noisy)
    lee = lee_filter(noisy)
    # refined Lee keeps the edge sharper: the first water column stays dark
    assert ref[8:56, 32].mean() < lee[8:56, 32].mean()


def test_sample_stats_pools_valid_pixels_of_every_view() -> None:
    """One statistics routine for chips on disk and samples in memory; NaN (nodata) pixels never count."""
    from floodlora.data.sar import sample_stats

    def sample(chip: str, values: list[float]) -> Sample:
        a = np.array(values, dtype=np.float32).reshape(1, -1)
        meta = SampleMeta(chip_id=chip, event="e", source="s", units="db")
        return Sample(views={"post": {"vv": a}}, mask=None, meta=meta)

    stats = sample_stats([sample("a", [1.0, 3.0, np.nan]), sample("b", [5.0, 7.0, 9.0])])
    vv = stats["bands"]["vv"]
    assert stats["n_chips"] == 2 and vv["count"] == 5
    assert vv["mean"] == 5.0 and vv["min"] == 1.0 and vv["max"] == 9.0
    assert vv["std"] == pytest.approx(np.std([1.0, 3.0, 5.0, 7.0, 9.0]), abs=1e-6)


def test_centre_window_is_centred() -> None:
    from floodlora.data.sample import centre_window

    rows, cols = centre_window(10, 7, 4, 3)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (3, 7, 2, 5)
