"""Per-scene normalisation: each scene standardised with robust statistics of its own pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.data.datamodule import preset_for, resolve_presets, scene_key
from floodlora.data.sample import Sample, SampleMeta
from floodlora.data.sar import PER_SCENE, NormalizationPreset, normalize_sample, scene_preset
from floodlora.errors import DataError


def _sample(vv: np.ndarray, units: str, chip: str = "c") -> Sample:
    return Sample(views={"post": {"vv": vv}}, mask=None, meta=SampleMeta(chip, "ev", "src", units=units))


def test_scene_preset_is_the_median_and_half_the_central_68_percent() -> None:
    vv = np.linspace(0.0, 100.0, 400 * 400, dtype=np.float32).reshape(400, 400)
    p = scene_preset([_sample(vv, "scaled-uint8")], "ev")
    assert p.units == "scaled-uint8" and p.name == f"{PER_SCENE}:ev"
    assert p.mean["vv"] == pytest.approx(50.0, abs=0.5)
    assert p.std["vv"] == pytest.approx(34.0, abs=0.5)  # (p84 - p16) / 2 of a uniform 0..100
    lin = scene_preset([_sample(np.full((64, 64), 0.01, np.float32), "linear")], "lin")
    assert lin.units == "db" and lin.mean["vv"] == pytest.approx(-20.0, abs=1e-4)


def test_an_affine_rescaling_of_a_scene_is_normalised_away() -> None:
    """The reason for the mode: 8-bit sources are dB rescaled by an unknown gain and offset."""
    rng = np.random.default_rng(0)
    db = np.where(rng.random((128, 128)) < 0.2, -22.0, -9.0) + rng.normal(0, 2, (128, 128))
    db = db.astype(np.float32)
    eight_bit = (db * 6.0 + 230.0).astype(np.float32)
    a = normalize_sample(_sample(db, "db"), ["vv"], scene_preset([_sample(db, "db")], "a"))["post"]
    b = normalize_sample(
        _sample(eight_bit, "scaled-uint8"), ["vv"], scene_preset([_sample(eight_bit, "scaled-uint8")], "b")
    )["post"]
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert abs(float(np.median(a))) < 0.05


def test_a_scene_without_valid_pixels_is_an_error() -> None:
    with pytest.raises(DataError, match="no valid pixels"):
        scene_preset([_sample(np.full((8, 8), np.nan, np.float32), "db")], "empty")


def test_per_scene_presets_are_per_event_and_a_run_keeps_its_own(real_data: Path) -> None:
    from floodlora.data.sources import discover

    etci = real_data / "etci2021"
    refs = (
        discover([etci / "nebraska_20170213t002121"])[:6] + discover([etci / "northal_20190302t234651"])[:6]
    )
    presets = resolve_presets(PER_SCENE, refs, [])
    assert sorted(presets) == sorted({scene_key(r) for r in refs}) and len(presets) == 2
    neb, nal = (preset_for(presets, r) for r in (refs[0], refs[-1]))
    assert neb.units == nal.units == "scaled-uint8"
    assert neb.mean["vh"] != pytest.approx(nal.mean["vh"], abs=1.0)  # the two scenes differ
    fixed = {
        scene_key(refs[0]): NormalizationPreset(
            "kept", "scaled-uint8", {"vv": 1.0, "vh": 2.0}, {"vv": 3.0, "vh": 4.0}
        )
    }
    again = resolve_presets(PER_SCENE, refs, [], fixed=fixed)
    assert preset_for(again, refs[0]).name == "kept"
    assert preset_for(again, refs[-1]) == nal  # an event the run never saw: its own statistics


def test_predict_standardises_a_scene_with_its_own_pixels(tmp_path: Path) -> None:
    """A per-scene run: predict on a dB GeoTIFF = the model on the scene standardised by itself."""
    import rasterio
    from tests.inference_helpers import PointwiseModel, db_scene, write_scene

    from floodlora.inference.predict import PredictOptions, predict_scene

    scene = db_scene(64, 64, seed=3)
    path = write_scene(tmp_path / "post.tif", scene)
    model = PointwiseModel()
    probs = tmp_path / "p.tif"
    res = predict_scene(
        model,
        {"post": path},
        tmp_path / "m.tif",
        preset=PER_SCENE,
        probabilities=probs,
        options=PredictOptions(tile=32, progress=False, cog=False),
    )
    assert any("per-scene normalisation" in m for m in res.messages)
    sample = Sample(
        views={"post": {"vv": scene[0], "vh": scene[1]}},
        mask=None,
        meta=SampleMeta("s", "e", "x", units="db"),
    )
    normed = normalize_sample(sample, ["vv", "vh"], scene_preset([sample], "scene"))["post"]
    with torch.no_grad():
        expected = torch.sigmoid(model({"post": torch.from_numpy(normed)[None]}))[0, 0].numpy()
    with rasterio.open(probs) as ds:
        np.testing.assert_allclose(ds.read(1), expected, atol=1e-4)


def test_per_scene_8bit_standardises_only_the_8bit_scenes() -> None:
    from floodlora.data.sar import PER_SCENE_8BIT, PRESETS
    from floodlora.data.sources import ChipRef

    refs = [ChipRef("c0", "c2s-a", "c2s", None, {}, "db", True)]
    assert resolve_presets(PER_SCENE_8BIT, refs, [], "clay-v1.5") == {"c2s": PRESETS["clay-v1.5"]}


def _two_view(pre: np.ndarray, post: np.ndarray) -> Sample:
    meta = SampleMeta("c", "ev", "src", units="scaled-uint8")
    return Sample(views={"pre": {"vv": pre}, "post": {"vv": post}}, mask=None, meta=meta)


def test_per_view_statistics_remove_a_stretch_of_one_view() -> None:
    """8-bit products stretch each image on its own: a dry scene brightened after the event by a
    gain and offset must look the same in both views, which pooled statistics cannot give."""
    rng = np.random.default_rng(1)
    pre = (120 + 20 * rng.standard_normal((96, 96))).astype(np.float32)
    post = (pre * 1.3 + 25).astype(np.float32)
    sample = _two_view(pre, post)
    per_view = scene_preset([sample], "ev", per_view=True)
    assert sorted(per_view.mean) == ["post:vv", "pre:vv"]
    a = normalize_sample(sample, ["vv"], per_view)
    np.testing.assert_allclose(a["pre"], a["post"], atol=2e-3)
    pooled = normalize_sample(sample, ["vv"], scene_preset([sample], "ev"))
    assert float(np.median(pooled["post"] - pooled["pre"])) > 0.5  # pooled keeps the stretch
    # a preset with band keys only serves every view (every other mode)
    assert normalize_sample(_sample(pre, "scaled-uint8"), ["vv"], scene_preset([sample], "ev"))["post"].shape


def test_per_view_8bit_aligns_ombria_dry_land_before_and_after(real_data: Path) -> None:
    """On the real OMBRIA chips, dry land sits at one level before and after the event only with
    per-view statistics."""
    from floodlora.data.datamodule import FloodDataset
    from floodlora.data.sar import PER_SCENE_8BIT, PER_VIEW_8BIT
    from floodlora.data.sources import discover

    refs = discover([real_data / "ombria" / "OmbriaS1" / "train"])[::12]

    def dry_shift(mode: str) -> float:
        ds = FloodDataset(refs, resolve_presets(mode, refs, refs), ["pre", "post"], ["vv"], crop_size=None)
        pre, post = [], []
        for i in range(len(ds)):
            item = ds[i]
            dry = (item["mask"] == 0) & item["valid"]
            pre.append(item["views"]["pre"][0][dry].numpy())
            post.append(item["views"]["post"][0][dry].numpy())
        return float(np.median(np.concatenate(post)) - np.median(np.concatenate(pre)))

    pooled, per_view = dry_shift(PER_SCENE_8BIT), dry_shift(PER_VIEW_8BIT)
    assert pooled > 0.5
    assert abs(per_view) < pooled / 2


def test_no_change_pairs_show_the_pre_view_twice_with_nothing_flooded(tmp_path: Path) -> None:
    from floodlora.data.datamodule import FloodDataset
    from floodlora.data.sources import ChipRef
    from floodlora.errors import ConfigError

    rng = np.random.default_rng(2)
    pre, post = rng.random((2, 32, 32), dtype=np.float32) * 200
    mask = (rng.random((32, 32)) < 0.3).astype(np.uint8)
    mask[:4] = 255
    meta = SampleMeta("c", "ev", "src", units="scaled-uint8")
    sample = Sample(views={"pre": {"vv": pre}, "post": {"vv": post}}, mask=mask, meta=meta)
    preset = NormalizationPreset("p", "scaled-uint8", {"vv": 100.0}, {"vv": 50.0})

    def item(kind: str, share: float, train: bool = True) -> dict:
        ref = ChipRef("c", "ev", "ombria", None, {"post": "c.png"}, "scaled-uint8", True, {"labels": kind})
        ds = FloodDataset([ref], {"ombria": preset}, ["pre", "post"], ["vv"], crop_size=None, train=train,
                          no_change_pairs=share)  # fmt: skip
        ds.load = lambda index: sample  # type: ignore[method-assign]
        return ds[0]

    pair = item("flood", 1.0)
    torch.testing.assert_close(pair["views"]["post"], pair["views"]["pre"])
    assert set(pair["mask"].unique().tolist()) == {0, 255} and bool((pair["mask"][:4] == 255).all())
    for kept in (item("water", 1.0), item("flood", 0.0), item("flood", 1.0, train=False)):
        assert not torch.equal(kept["views"]["post"], kept["views"]["pre"])
        assert int((kept["mask"] == 1).sum()) == int((mask == 1).sum())
    with pytest.raises(ConfigError, match="no_change_pairs"):
        item("flood", 1.5)
