"""Classical baselines: Otsu, change detection, fitted thresholds, scoring like `evaluate`, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from floodlora.analysis.baselines import (
    Grid,
    baseline_for_data,
    baseline_image,
    fit_threshold,
    otsu_threshold,
    predict_baseline,
    run_baseline,
)
from floodlora.data.sample import Sample, SampleMeta
from floodlora.errors import DataError
from floodlora.metrics import METRIC_KEYS


def _meta(chip: str = "c0", event: str = "e", units: str = "db") -> SampleMeta:
    return SampleMeta(chip_id=chip, event=event, source="synthetic", units=units)


def test_otsu_recovers_threshold_of_bimodal_image() -> None:
    rng = np.random.default_rng(0)
    # water at -22 dB, land at -10 dB, equal spread: the optimal cut is the midpoint -16
    img = np.concatenate([rng.normal(-22, 1.5, 30000), rng.normal(-10, 1.5, 50000)])
    t = otsu_threshold(img)
    assert abs(t - (-16.0)) < 0.5
    assert abs(otsu_threshold(img, Grid.for_units("db", change=False)) - t) < 0.2
    # unequal spreads and weights still land between the modes, near the valley
    img2 = np.concatenate([rng.normal(50, 8, 20000), rng.normal(150, 15, 60000)])
    assert 80 < otsu_threshold(img2, Grid.for_units("scaled-uint8", change=False)) < 110


def test_otsu_constant_and_empty_images() -> None:
    assert otsu_threshold(np.full(100, 3.0)) <= 3.0
    with pytest.raises(DataError):
        otsu_threshold(np.full(10, np.nan))


def _change_scene(seed: int = 0, size: int = 64) -> Sample:
    """Land -10 dB; permanent water (-22 dB) in the pre and post image; a planted flood in post only."""
    rng = np.random.default_rng(seed)
    pre = rng.normal(-10, 1.0, (size, size)).astype(np.float32)
    post = rng.normal(-10, 1.0, (size, size)).astype(np.float32)
    lake = np.zeros((size, size), bool)
    lake[:, :12] = True
    flood = np.zeros((size, size), bool)
    flood[20:44, 30:60] = True
    pre[lake] = rng.normal(-22, 1.0, lake.sum())
    post[lake | flood] = rng.normal(-22, 1.0, (lake | flood).sum())
    mask = flood.astype(np.uint8)
    return Sample(views={"pre": {"vv": pre}, "post": {"vv": post}}, mask=mask, meta=_meta(f"c{seed}"))


def test_change_detection_finds_flood_and_ignores_permanent_water() -> None:
    s = _change_scene()
    res = run_baseline("change", [s], band="vv", mode="chip", keep_predictions=True)
    pred = res["predictions"]["c0"]
    assert pred[20:44, 30:60].mean() > 0.95  # the flood is found
    assert pred[:, :12].mean() < 0.05  # the lake is dark in both images: not flood
    assert res["f1"] > 0.9
    # Otsu on the post image alone maps the lake as flood too (what change detection is for)
    otsu = run_baseline("otsu", [s], band="vv", mode="chip", keep_predictions=True)
    assert otsu["predictions"]["c0"][:, :12].mean() > 0.9 and otsu["precision"] < 0.7


def test_fitted_threshold_and_result_keys() -> None:
    train = [_change_scene(i) for i in range(3)]
    t = fit_threshold(train, "change", "vv")
    assert -12 < t < -4  # between no change (0 dB) and the flood drop (-12 dB)
    res = run_baseline("change", [_change_scene(7)], band="vv", mode="fitted", train=train)
    assert set(METRIC_KEYS) <= set(res) and res["threshold"] == 0.5
    assert res["baseline"]["threshold_value"] == pytest.approx(t)
    assert set(res["per_event"]) == {"e"} and res["n_chips"] == 1
    json.dumps(res)  # JSON-ready
    with pytest.raises(DataError):
        run_baseline("change", train, mode="fitted")


def test_nodata_is_not_scored_and_missing_views_are_clear() -> None:
    s = _change_scene()
    s.views["post"]["vv"][:8] = np.nan
    s.valid = np.isfinite(s.views["post"]["vv"])
    s.mask[8:10] = 255
    img = baseline_image(s, "otsu", "vv")
    assert np.isnan(img[:10]).all() and np.isfinite(img[10:]).all()
    res = run_baseline("otsu", [s], band="vv", max_nodata_fraction=None)
    assert res["n_pixels"] == 64 * 54
    post_only = Sample(views={"post": {"vv": s.views["post"]["vv"]}}, mask=s.mask, meta=_meta())
    with pytest.raises(DataError, match="pre-event"):
        predict_baseline(post_only, "change", 0.0, "vv")
    with pytest.raises(DataError, match="vh"):
        baseline_image(post_only, "otsu", "vh")


def test_per_event_threshold_pools_chips() -> None:
    chips = [_change_scene(i) for i in range(2)]
    chips[1].meta.event = "other"
    res = run_baseline("otsu", chips, band="vv", mode="event")
    assert set(res["baseline"]["threshold_value"]) == {"e", "other"}
    assert set(res["per_event"]) == {"e", "other"}


def test_otsu_on_real_ombria_test_is_plausible(real_data: Path) -> None:
    """Per-chip Otsu on OMBRIA test: measured F1 0.651 (VV, scaled 8-bit values, fill strips nodata)."""
    res = baseline_for_data("otsu", real_data / "ombria" / "OmbriaS1", split="test", band="both", mode="chip")
    assert res["n_chips"] == 70
    assert 0.55 < res["f1"] < 0.78, res["f1"]
    assert 0.6 < res["accuracy"] < 0.9


def test_cli_baseline_writes_evaluate_keys(tmp_path: Path, real_data: Path) -> None:
    from typer.testing import CliRunner

    from floodlora.cli import app

    out = tmp_path / "b.json"
    data = real_data / "ombria" / "OmbriaS1"
    r = CliRunner().invoke(app, ["baseline", "otsu", "--data", str(data), "--json", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())
    assert set(METRIC_KEYS) | {"threshold", "per_event", "per_chip", "split", "data"} <= set(got)
    assert "Otsu" in r.output
