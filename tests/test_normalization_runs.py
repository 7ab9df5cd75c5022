"""Normalisation belongs to the checkpoint and to the run; sampling favours flood chips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.data.datamodule import GroupedBatchSampler, resolve_presets, sampling_weights
from floodlora.data.sar import PRESETS, NormalizationPreset, get_preset
from floodlora.data.sources import ChipRef
from floodlora.errors import ConfigError
from floodlora.models.registry import checkpoint_normalization


def test_auto_resolves_to_each_checkpoints_own_statistics() -> None:
    assert checkpoint_normalization("clay-v1-base") == "clay-v1"
    assert checkpoint_normalization("clay-v1.5") == "clay-v1.5"
    assert checkpoint_normalization("embedded") == "floodlora-mini"
    embedded = get_preset("auto", "linear", None, checkpoint_normalization("embedded"))
    assert embedded is PRESETS["floodlora-mini"] and embedded.units == "db"
    v1 = get_preset("auto", "db", None, checkpoint_normalization("clay-v1-base"))
    assert v1 is PRESETS["clay-v1"] and v1.units == "linear"
    assert get_preset("auto", "linear", None, "clay-v1.5").units == "db"
    with pytest.raises(ConfigError, match="unknown base preset"):
        get_preset("auto", "db", None, "clay-v9")


def test_embedded_db_preset_is_recomputed_from_the_calibrated_real_images(real_data: Path) -> None:
    """`floodlora-mini`: per band, the median over the calibrated images (labels unused) of each
    image's robust centre and spread; with it dB water stands out from land as in the 8-bit sources."""
    from floodlora.data.sar import robust_band_stats
    from floodlora.data.sources import discover, read_sample

    refs = [r for r in discover([real_data, real_data / "unlabeled"]) if r.units in ("db", "linear")]
    per_band: dict[str, list[tuple[float, float]]] = {}
    for ref in {r.chip_id: r for r in refs}.values():
        sample = read_sample(ref)
        stats = robust_band_stats((b, a, sample.valid) for v in sample.views.values() for b, a in v.items())
        for band, centre_spread in stats.items():
            per_band.setdefault(band, []).append(centre_spread)
    preset = PRESETS["floodlora-mini"]
    assert sorted(per_band) == ["vh", "vv"] and len(per_band["vv"]) == 5
    for band, values in per_band.items():
        centre, spread = np.median(np.array(values), axis=0)
        assert preset.mean[band] == pytest.approx(centre, abs=0.02)
        assert preset.std[band] == pytest.approx(spread, abs=0.02)

    spain = read_sample(next(r for r in refs if r.format == "sen1floods11"))
    ok = spain.valid & (spain.mask != 255)
    vh = spain.views["post"]["vh"]
    gap_db = float(np.median(vh[ok & (spain.mask == 0)]) - np.median(vh[ok & (spain.mask == 1)]))
    assert gap_db / PRESETS["clay-v1.5"].std["vh"] < 1.1 < 1.6 < gap_db / preset.std["vh"]


def test_preset_round_trips_through_a_dict() -> None:
    p = NormalizationPreset("x", "scaled-uint8", {"vv": 1.5}, {"vv": 2.0})
    assert NormalizationPreset.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match="not a normalisation preset"):
        NormalizationPreset.from_dict({"name": "x"}, "run/normalization.json")


def _refs(fmt: str, units: str, n: int, split: str | None = None) -> list[ChipRef]:
    return [ChipRef(f"{fmt}-{i}", f"{fmt}-ev", fmt, split, {}, units, True) for i in range(n)]


def test_run_presets_win_and_unseen_8bit_sources_need_a_flag() -> None:
    fixed = {"ombria": NormalizationPreset("auto-stats", "scaled-uint8", {"vv": 90.0}, {"vv": 40.0})}
    refs = _refs("ombria", "scaled-uint8", 2) + _refs("c2s", "db", 1)
    # the warning names the fix a responder can apply: a few labelled chips through `adapt`
    with pytest.warns(UserWarning, match=r"8-bit rescaled sources only.*floodlora adapt RUN --data CHIPS"):
        got = resolve_presets("auto", refs, [], "clay-v1.5", fixed)
    assert got["ombria"] is fixed["ombria"]
    with pytest.warns(UserWarning, match="8-bit rescaled sources only"):
        assert (
            resolve_presets("auto", _refs("c2s", "db", 1), [], "clay-v1.5", fixed)["c2s"]
            is PRESETS["clay-v1.5"]
        )
    with pytest.raises(ConfigError, match="--stats-from-data"):
        resolve_presets("auto", _refs("etci2021", "scaled-uint8", 2), [], "clay-v1.5", fixed)


def test_training_without_chips_of_an_8bit_source_needs_the_flag(real_data: Path) -> None:
    from floodlora.data.sources import discover

    refs = discover([real_data / "etci2021" / "nebraska_20170213t002121"])[:3]
    with pytest.raises(ConfigError, match="etci2021: 8-bit rescaled chips"):
        resolve_presets("auto", refs, [], "clay-v1.5")
    with pytest.warns(UserWarning, match="statistics of the chips being scored"):
        got = resolve_presets("auto", refs, [], "clay-v1.5", None, stats_from_data=True)
    assert got["etci2021"].units == "scaled-uint8" and 0 < got["etci2021"].mean["vv"] < 255


def test_sampling_weights_give_flood_chips_their_share() -> None:
    formats = ["a"] * 8 + ["b"] * 2
    flood = [True, False, False, False, False, False, False, False, True, True]
    w = sampling_weights(formats, flood, 0.75, balance_sources=False)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.8 * 0.75)  # source a: 8 of 10 chips, its one flood chip gets 75 %
    assert w[1] == pytest.approx(0.8 * 0.25 / 7)
    assert w[8] == w[9] == pytest.approx(0.1)  # source b: only flood chips, no preference to apply
    balanced = sampling_weights(formats, flood, 0.0, balance_sources=True)
    share_b = balanced[8:].sum()
    assert share_b == pytest.approx(np.sqrt(2) / (np.sqrt(8) + np.sqrt(2)))
    with pytest.raises(ConfigError, match="flood_sampling"):
        sampling_weights(formats, flood, 1.0, False)


def test_grouped_batches_never_mix_view_sets_and_repeat_with_the_seed() -> None:
    groups = ["pre+post"] * 6 + ["post"] * 6
    weights = np.full(12, 1 / 12)
    sampler = GroupedBatchSampler(weights, groups, batch_size=4, num_samples=40, seed=3)
    epoch0 = list(sampler)
    assert sum(len(b) for b in epoch0) == 40
    for batch in epoch0:
        assert len({groups[i] for i in batch}) == 1
    again = GroupedBatchSampler(weights, groups, batch_size=4, num_samples=40, seed=3)
    assert list(again) == epoch0
    assert list(sampler) != epoch0  # a new draw each epoch


def test_flood_sampling_sets_the_share_of_flood_chips(real_data: Path) -> None:
    from floodlora.config import DataConfig
    from floodlora.data.datamodule import FloodDataModule

    cfg = DataConfig(
        roots=[str(real_data / "etci2021" / "nebraska_20170213t002121")],
        flood_sampling=0.3,
        val_fraction=0.0,
        test_fraction=0.0,
        views=["post"],
        limit_train=60,
    )
    dm = FloodDataModule(cfg)
    dm.setup()
    sampler = dm.train_batch_sampler()
    assert sampler is not None
    refs = dm.splits["train"]
    wet = np.array([dm.chip_info[(r.format, r.chip_id)][0] for r in refs])
    assert 0.5 < wet.mean() < 1.0  # most of these Nebraska tiles hold some flood, a few none
    drawn = np.concatenate([np.array(b) for b in sampler])
    assert wet[drawn].mean() == pytest.approx(0.3, abs=0.12)


def test_stored_normalisation_is_used_by_predict_and_evaluate(tmp_path: Path) -> None:
    """Train with a stats YAML, delete it: predict and evaluate still normalise as training did."""
    import yaml
    from tests.inference_helpers import db_scene, write_scene

    from floodlora.config import load_config
    from floodlora.data.sar import save_stats
    from floodlora.inference.predict import PredictOptions, predict_run
    from floodlora.training.engine import evaluate_run, train_run

    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.yaml").write_text("units: db\nviews: [post]\nbands: [vv, vh]\n")
    for i in range(6):
        chip = data / "chips" / f"c{i}"
        chip.mkdir(parents=True)
        scene = db_scene(32, 32, seed=i)
        write_scene(chip / "post.tif", scene)
        water = (scene[0] < -15).astype(np.uint8)
        import rasterio
        from rasterio.transform import Affine

        with rasterio.open(
            chip / "mask.tif",
            "w",
            driver="GTiff",
            height=32,
            width=32,
            count=1,
            dtype="uint8",
            crs="EPSG:32633",
            transform=Affine(10, 0, 500000, 0, -10, 5000000),
        ) as ds:
            ds.write(water[None])
    stats = {
        "format": "floodlora-stats",
        "version": 1,
        "units": "db",
        "bands": {"vv": {"mean": -14.0, "std": 5.0}, "vh": {"mean": -20.0, "std": 5.0}},
    }
    stats_path = tmp_path / "stats.yaml"
    save_stats(stats, stats_path)
    cfg = load_config(
        None,
        {
            "data.roots": [str(data)],
            "data.views": ["post"],
            "data.crop_size": 32,
            "data.batch_size": 2,
            "data.normalization": str(stats_path),
            "data.val_fraction": 0.34,
            "data.test_fraction": 0.0,
            "model.checkpoint": "random:test-micro",
            "train.max_epochs": 1,
            "train.limit_train_batches": 1,
            "train.accelerator": "cpu",
            "train.precision": "32-true",
        },
    )
    run = tmp_path / "run"
    train_run(cfg, run)
    stored = yaml.safe_load((run / "normalization.json").read_text())
    assert next(iter(stored.values()))["mean"] == {"vv": -14.0, "vh": -20.0}
    stats_path.unlink()  # the run must not need it any more

    report = evaluate_run(run, split="val")
    assert report["threshold_source"] == "val (run)"
    assert report["threshold"] == pytest.approx(
        yaml.safe_load((run / "metrics.json").read_text())["best_threshold"]
    )
    assert "at_threshold_0.5" in report or report["threshold"] == 0.5

    from floodlora.data.datamodule import FloodDataset
    from floodlora.data.sources import discover
    from floodlora.runs import load_run

    loaded = load_run(run)
    ref = next(r for r in discover([data]) if r.chip_id.endswith("c0"))
    item = FloodDataset([ref], loaded.presets, ["post"], ["vv", "vh"], crop_size=None)[0]
    with torch.no_grad():
        expected = torch.sigmoid(loaded.model({"post": item["views"]["post"][None]}))[0, 0].numpy()
    out = tmp_path / "flood.tif"
    probs = tmp_path / "probs.tif"
    res = predict_run(
        run,
        {"post": data / "chips" / "c0" / "post.tif"},
        out,
        probabilities=probs,
        options=PredictOptions(tile=32, progress=False, cog=False),
    )
    import rasterio

    with rasterio.open(probs) as ds:
        got = ds.read(1)
    np.testing.assert_allclose(got, expected, atol=2e-4)  # same numbers; float32 tiling order aside
    assert res is not None
    with rasterio.open(out) as ds:
        assert ds.tags()["threshold"] == str(loaded.threshold)
