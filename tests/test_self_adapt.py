"""Label-free maps: split-based thresholding (the teacher) and `adapt --method self` (the student)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from floodlora.cli import app
from floodlora.data.sample import Sample, SampleMeta
from floodlora.data.split_threshold import DrySceneError, SplitOptions, ashman_d, split_threshold
from floodlora.errors import ConfigError, DataError
from floodlora.training.adapt import AdaptOptions
from floodlora.training.self_adapt import SelfOptions, self_adapt


def _scene(seed: int, size: int = 128, water: bool = True, looks: float = 4.0) -> tuple[Sample, np.ndarray]:
    """A dB scene: land (-8 dB VV, -15 VH) with a river band and a lake of water (-22 / -28 dB),
    multiplicative speckle of `looks` looks; returns the sample and the true water mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    truth = np.zeros((size, size), dtype=bool)
    if water:
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        truth |= ((yy - cy) / (0.2 * size)) ** 2 + ((xx - cx) / (0.25 * size)) ** 2 < 1
        truth |= np.abs(xx - 0.15 * size - 0.2 * yy) < 0.06 * size
    bands = {}
    for band, land, wet in (("vv", -8.0, -22.0), ("vh", -15.0, -28.0)):
        linear = 10 ** (np.where(truth, wet, land) / 10) * rng.gamma(looks, 1 / looks, truth.shape)
        bands[band] = (10 * np.log10(linear)).astype(np.float32)
    meta = SampleMeta(chip_id=f"s{seed}", event="synthetic", source="folder", units="db")
    return Sample(views={"post": bands}, mask=truth.astype(np.uint8), meta=meta), truth


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    return 2 * tp / max(float(pred.sum() + truth.sum()), 1.0)


def test_teacher_finds_the_water_of_a_bimodal_scene() -> None:
    sample, truth = _scene(0)
    res = split_threshold([sample])
    assert res.kind == "water" and set(res.bands) == {"vv", "vh"}
    water = res.water[0] == 1
    assert _f1(water, truth) > 0.9  # 4-look speckle: the per-pixel threshold errs on a few pixels
    fit = res.bands["vv"]
    assert -22.0 < fit.threshold < -8.0 and fit.tiles_kept >= 1
    pseudo = res.pseudo[0]
    labelled = pseudo != 255
    assert 0.3 < labelled.mean() < 1.0  # shores and unsure pixels stay unlabelled
    assert (pseudo[labelled] == truth[labelled]).mean() > 0.99  # confident pixels are right
    assert res.describe()["pseudo_labelled_fraction"] == pytest.approx(labelled.mean())


def test_teacher_maps_a_dry_scene_dry_and_says_so() -> None:
    sample, _ = _scene(1, water=False)
    res = split_threshold([sample])
    assert not res.found_water and res.bands == {}
    assert (res.water[0] == 0).all() and (res.pseudo[0] == 0).all()
    assert "no bimodal tile" in res.messages[0] and "dry" in res.messages[0]


def test_ashman_d_of_an_otsu_split_of_one_gaussian_is_below_the_default() -> None:
    """Why the default is 3, not the textbook 2: splitting a unimodal speckled tile at its Otsu
    threshold already gives D of about 2.7."""
    v = np.random.default_rng(0).normal(0, 1, 100_000)
    d = ashman_d(v[v <= 0], v[v > 0])
    assert 2.5 < d < 2.9 < SplitOptions().min_ashman_d


def test_new_water_needs_a_change_pre_equal_to_post_maps_no_flood() -> None:
    sample, truth = _scene(2)
    post = sample.views["post"]
    same = Sample(views={"pre": post, "post": post}, mask=None, meta=sample.meta)
    res = split_threshold([same])
    assert res.kind == "flood" and (res.water[0] == 1).mean() == 0.0
    dry_before, _ = _scene(3, water=False)
    changed = Sample(views={"pre": dry_before.views["post"], "post": sample.views["post"]}, mask=None,
                     meta=sample.meta)  # fmt: skip
    res = split_threshold([changed])
    assert _f1(res.water[0] == 1, truth) > 0.85


def test_excluded_ground_is_never_water() -> None:
    sample, truth = _scene(4)
    exclude = np.zeros_like(truth)
    exclude[:, :40] = True
    res = split_threshold([sample], exclude=[exclude])
    assert not (res.water[0][exclude] == 1).any() and (res.pseudo[0][exclude] == 255).all()


def test_teacher_options_refuse_nonsense() -> None:
    with pytest.raises(ConfigError, match="min class share"):
        SplitOptions(min_class_share=0.6)
    with pytest.raises(ConfigError, match="Ashman"):
        SplitOptions(min_ashman_d=float("nan"))
    with pytest.raises(DataError, match="no images"):
        split_threshold([])


def _write_scenes(root: Path, n: int, looks: float = 2.0) -> list[np.ndarray]:
    """`n` scenes in the folder layout; their truth goes in a file adaptation never reads."""
    from floodlora.data.sources.folder import write_dataset_yaml, write_sample

    truths = []
    for i in range(n):
        sample, truth = _scene(10 + i, size=96, looks=looks)
        sample.mask = None  # unlabelled: self-adaptation must not need labels
        write_sample(sample, root / "chips" / sample.meta.chip_id, ["vv", "vh"])
        truths.append(truth)
    write_dataset_yaml(root, "db", ["post"], ["vv", "vh"], "synthetic")
    return truths


FAST_SELF = SelfOptions(
    training=AdaptOptions(
        method="fine-tune", steps_per_epoch=8, max_epochs=6, batch_size=4, lr=3e-3, seed=0, prior=False
    )
)


def test_self_adaptation_beats_its_teacher_on_hidden_truth(tmp_path: Path) -> None:
    import torch

    from floodlora.data.sources import discover, read_sample
    from floodlora.inference.predict import PredictOptions, predict_run

    truths = _write_scenes(tmp_path / "chips", 4)
    torch.manual_seed(0)
    result = self_adapt("random:test-micro", tmp_path / "chips", tmp_path / "run", options=FAST_SELF)
    s = json.loads((tmp_path / "run" / "adapt.json").read_text())
    assert s == result.summary and s["method"] == "self" and s["labels_used"] is False
    assert s["teacher"]["events"]["synthetic"]["kind"] == "water" and s["pseudo_labelled_chips"] == 4
    assert "agreement with the teacher's whole map" in s["operating_point"]["rule"]
    assert not list(tmp_path.glob(".run-self-*")), "the scratch folder beside the run is removed"

    refs = discover(tmp_path / "chips")
    teacher = split_threshold([read_sample(r) for r in refs])
    student_f1, teacher_f1 = [], []
    for i, ref in enumerate(refs):
        truth = truths[int(ref.chip_id[1:]) - 10]
        pred = predict_run(
            tmp_path / "run", {"post": ref.files["post"]}, tmp_path / f"m{i}.tif",
            options=PredictOptions(tile=96, progress=False),
        )  # fmt: skip
        import rasterio

        with rasterio.open(pred.out) as ds:
            student_f1.append(_f1(ds.read(1) == 1, truth))
        teacher_f1.append(_f1(teacher.water[i] == 1, truth))
    assert np.mean(student_f1) > np.mean(teacher_f1), (student_f1, teacher_f1)


def test_self_adaptation_ignores_labels_in_the_data(tmp_path: Path) -> None:
    """Labels that say the opposite of the imagery must change nothing the teacher hands over."""
    from floodlora.data.sources import discover
    from floodlora.data.sources.folder import write_dataset_yaml, write_sample
    from floodlora.training.adapt import PseudoLabels
    from floodlora.training.self_adapt import teach

    sample, truth = _scene(20, size=96)
    sample.mask = (~truth).astype(np.uint8)  # every label wrong
    write_sample(sample, tmp_path / "d" / "chips" / "a", ["vv", "vh"])
    write_dataset_yaml(tmp_path / "d", "db", ["post"], ["vv", "vh"], "synthetic")
    teaching = teach(discover(tmp_path / "d"), SplitOptions(), tmp_path / "pseudo")
    assert isinstance(teaching.pseudo, PseudoLabels)
    pseudo = np.load(next(iter(teaching.pseudo.files.values())))
    labelled = pseudo != 255
    assert (pseudo[labelled] == truth[labelled]).mean() > 0.99


def test_self_adaptation_of_a_dry_scene_stops_with_one_reason(tmp_path: Path) -> None:
    from floodlora.data.sources.folder import write_dataset_yaml, write_sample

    sample, _ = _scene(30, size=64, water=False)
    write_sample(sample, tmp_path / "d" / "chips" / "a", ["vv", "vh"])
    write_dataset_yaml(tmp_path / "d", "db", ["post"], ["vv", "vh"], "dry")
    with pytest.raises(DrySceneError, match="no bimodal tile"):
        self_adapt("random:test-micro", tmp_path / "d", tmp_path / "run", options=FAST_SELF)
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run-self-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{empty}"], "no known dataset layout"),
        (["--view", "post={missing}"], "scene not found"),
        (["--view", "post={nodata}"], "no valid pixels"),
        (["--data", "{chips}", "--view", "post={nodata}"], "pass --data PATH (chips) or --view"),
        (["--view", "pre={nodata}"], "needs a post-event scene"),
    ],
)
def test_adapt_self_bad_input_is_one_line(
    tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import rasterio
    from rasterio.transform import from_origin

    from floodlora import cli

    (tmp_path / "empty").mkdir()
    nodata = tmp_path / "nodata.tif"
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 2, "dtype": "float32", "nodata": np.nan,
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10)}  # fmt: skip
    with rasterio.open(nodata, "w", **profile) as ds:
        ds.write(np.full((2, 32, 32), np.nan, dtype=np.float32))
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "nope.tif", "nodata": nodata,
             "chips": tmp_path / "empty"}  # fmt: skip
    argv = ["floodlora", "adapt", "--method", "self", "--out", str(tmp_path / "run"), "--no-progress"]
    argv += [a.format(**paths) for a in args]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_adapt_self_cli_on_a_scene_writes_a_run(tmp_path: Path) -> None:
    """--view on a georeferenced dB scene (the scene is cut into chips beside the run, then removed)."""
    import rasterio
    from rasterio.transform import from_origin

    sample, _ = _scene(40, size=96)
    scene = tmp_path / "post.tif"
    profile = {"driver": "GTiff", "width": 96, "height": 96, "count": 2, "dtype": "float32",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10)}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as ds:
        ds.write(np.stack([sample.views["post"]["vv"], sample.views["post"]["vh"]]))
        ds.descriptions = ("VV", "VH")
    args = ["adapt", "random:test-micro", "--method", "self", "--view", f"post={scene}", "--out",
            str(tmp_path / "run"), "--max-epochs", "1", "--steps", "2", "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "self-adapted from encoder random:test-micro (no labels used)" in res.output
    assert "teacher on post" in res.output and "bimodal" in res.output
    s = json.loads((tmp_path / "run" / "adapt.json").read_text())
    assert s["data"] == {"scenes": {"post": str(scene)}} and s["epochs"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run-self-")]


def test_split_baseline_scores_like_the_other_baselines(real_data: Path) -> None:
    from floodlora.analysis.baselines import baseline_for_data

    res = baseline_for_data("split", real_data / "c2s_ms_floods", split="all")
    assert res["baseline"]["name"].startswith("Split-based thresholding")
    assert set(res["per_event"]) == {"c2s-jja", "c2s-pxs", "c2s-qxb"}
    assert 0.5 < res["f1"] < 0.9 and res["n_chips"] == 3
    fits = res["baseline"]["fits"]["c2s-pxs"]
    assert fits["kind"] == "water" and set(fits["bands"]) == {"vv", "vh"}


def test_self_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="tolerance"):
        SelfOptions(tolerance=1.5)
    assert replace(SelfOptions()).training.method == "fine-tune"


def test_adapt_self_with_a_dem_keeps_the_teacher_off_steep_ground(tmp_path: Path) -> None:
    """Dark pixels on a 60-degree wall (radar shadow looks like water) are no pseudo-water with --dem."""
    import rasterio
    from rasterio.transform import from_origin
    from tests.terrain_helpers import valley_dem, write_raster

    size = 96
    sample, truth = _scene(50, size=size)
    vv, vh = sample.views["post"]["vv"].copy(), sample.views["post"]["vh"].copy()
    wall = np.zeros_like(truth)
    wall[:, int(size * 0.85) :] = True  # the DEM's wall: dark like water, but steep
    rng = np.random.default_rng(1)
    vv[wall] = -22.0 + rng.normal(0, 1.5, wall.sum())
    vh[wall] = -28.0 + rng.normal(0, 1.5, wall.sum())
    scene = tmp_path / "post.tif"
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 2, "dtype": "float32",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10)}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as ds:
        ds.write(np.stack([vv, vh]))
        ds.descriptions = ("VV", "VH")
    cells = size // 3 + 4
    dem = valley_dem(cells, cells, 30.0, wall_from=int(size * 0.8) // 3 + 2)
    dem_tif = write_raster(tmp_path / "dem.tif", dem, "EPSG:32633",
                           (30.0, 0.0, 500000 - 60, 0.0, -30.0, 5000000 + 60), -9999.0)  # fmt: skip
    mapped = {}
    for name, extra in (("plain", []), ("dem", ["--dem", str(dem_tif)])):
        args = ["adapt", "random:test-micro", "--method", "self", "--view", f"post={scene}",
                "--out", str(tmp_path / name), "--max-epochs", "1", "--steps", "1", "--no-progress",
                *extra]  # fmt: skip
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        s = json.loads((tmp_path / name / "adapt.json").read_text())
        mapped[name] = s["teacher"]["events"]["post"]["mapped_fraction"]
    assert s["terrain"]["dem"] == str(dem_tif) and any("slope" in n for n in s["terrain"]["notes"])
    # without the DEM the wall counts as water; with it, only the true water remains
    assert mapped["plain"] > truth.mean() + 0.08 and mapped["dem"] < mapped["plain"] - 0.08
