"""FloodDataset / FloodDataModule: aligned augmentation, crops, splits, encodings, collation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.config import DataConfig
from floodlora.data.datamodule import (
    FloodDataModule,
    FloodDataset,
    assign_splits,
    augment_array,
    collate,
)
from floodlora.data.sample import Sample, SampleMeta
from floodlora.data.sar import PRESETS
from floodlora.data.sources import discover
from floodlora.data.sources.folder import write_dataset_yaml, write_sample
from floodlora.data.synthetic import write_folder_dataset
from floodlora.encodings import encode_latlon, encode_time


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dm")
    write_folder_dataset(root / "in", n=12, size=48, seed=0)
    write_folder_dataset(root / "ood", n=3, size=48, domain="ood", seed=9)
    return root


def _coded_chip(root: Path, h: int = 40, w: int = 40) -> None:
    """A chip whose pixel values encode their position, so alignment after augmentation can be checked."""
    idx = np.arange(h * w, dtype=np.float32).reshape(h, w)
    views = {"pre": {"vv": -idx / 100, "vh": -idx / 100 - 1}, "post": {"vv": -idx / 50, "vh": -idx / 50 - 1}}
    mask = (idx.astype(np.int64) % 2).astype(np.uint8)
    s = Sample(views, mask, SampleMeta("coded", "ev", "folder", "db", date="2021-07-15", lat=45.0, lon=10.0))
    write_sample(s, root / "train" / "coded")
    write_dataset_yaml(root, "db", ["pre", "post"], ["vv", "vh"], "ev")


def test_augmentation_keeps_views_and_mask_aligned(tmp_path: Path) -> None:
    _coded_chip(tmp_path)
    refs = discover([tmp_path])
    ds = FloodDataset(refs, {"folder": PRESETS["clay-v1.5"]}, crop_size=32, train=True, augment=True, seed=3)
    seen = set()
    for _ in range(12):
        item = ds[0]
        pre = item["views"]["pre"][0].numpy() * 8.314 - 12.113  # back to dB = -idx/100
        post = item["views"]["post"][0].numpy() * 8.314 - 12.113
        vh = item["views"]["pre"][1].numpy() * 8.017 - 18.673
        idx = np.rint(-pre * 100).astype(np.int64)
        np.testing.assert_allclose(-post * 50, idx, atol=0.05)
        np.testing.assert_allclose(-(vh + 1) * 100, idx, atol=0.05)
        np.testing.assert_array_equal(item["mask"].numpy(), idx % 2)
        assert item["mask"].shape == (32, 32) and item["valid"].all()
        seen.add(tuple(idx[0, :2]))
    assert len(seen) > 3  # crops/rotations really vary


def test_augment_array_is_a_dihedral_transform() -> None:
    a = np.arange(12).reshape(1, 3, 4)
    outs = {augment_array(a, k, f).tobytes() for k in range(4) for f in (False, True)}
    assert len(outs) == 8


def test_eval_full_chip_cut_to_multiple_of_8(tmp_path: Path) -> None:
    _coded_chip(tmp_path, 45, 50)
    ds = FloodDataset(discover([tmp_path]), {"folder": PRESETS["clay-v1.5"]}, crop_size=None)
    item = ds[0]
    # cut to multiples of 8 (40 x 48), then padded to a square with nodata: Clay needs square inputs
    assert item["views"]["post"].shape == (2, 48, 48) and item["mask"].shape == (48, 48)
    assert (item["mask"][40:] == 255).all() and not item["valid"][40:].any() and item["valid"][:40].all()
    assert (item["views"]["post"][:, 40:] == 0).all()
    t = item["time"]["post"].numpy()
    w = 28 * 2 * math.pi / 52  # 2021-07-15 is ISO week 28; hour 12 when only a date is known
    np.testing.assert_allclose(t, [math.sin(w), math.cos(w), 0.0, -1.0], atol=1e-6)
    assert not item["time"]["pre"].any()  # the pre-event view has no date of its own: unknown
    np.testing.assert_allclose(item["latlon"].numpy(), encode_latlon(45.0, 10.0))


def test_non_square_chips_evaluate_in_the_folder_format(tmp_path: Path) -> None:
    """Validation and test of 40 x 72 chips run through the encoder (padded square, padding not scored)."""
    from floodlora.config import ModelConfig
    from floodlora.models.factory import build_segmentor

    for split, h, w in (("train", 40, 72), ("val", 72, 40), ("test", 40, 72)):
        idx = np.arange(h * w, dtype=np.float32).reshape(h, w)
        views = {"post": {"vv": -10 - idx / (h * w), "vh": -17 - idx / (h * w)}}
        mask = (idx % 3 == 0).astype(np.uint8)
        write_sample(
            Sample(views, mask, SampleMeta(f"c-{split}", "ev", "folder", "db")), tmp_path / split / "c"
        )
    write_dataset_yaml(tmp_path, "db", ["post"], ["vv", "vh"], "ev")
    cfg = DataConfig(roots=[str(tmp_path)], views=["post"], crop_size=32, batch_size=2)
    dm = FloodDataModule(cfg)
    dm.setup()
    model = build_segmentor(
        ModelConfig(checkpoint="random:test-micro", strategy="frozen"), ["post"], ["vv", "vh"]
    )
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["mask"].shape == (1, 72, 72)
        assert int((batch["mask"] != 255).sum()) == 40 * 72  # every real pixel is kept and scored
        with torch.no_grad():
            logits = model(batch["views"], batch["time"], batch["latlon"])
        assert logits.shape[-2:] == (72, 72)


def test_chip_smaller_than_a_patch_fails_at_setup(tmp_path: Path) -> None:
    from floodlora.errors import DataError

    _coded_chip(tmp_path, 6, 40)
    for fraction in (0.5, 1.0):  # with and without the nodata scan of every chip
        dm = FloodDataModule(DataConfig(roots=[str(tmp_path)], crop_size=32, max_nodata_fraction=fraction))
        with pytest.raises(DataError, match=r"coded/.*: chip 40x6 px is smaller than one 8 px encoder patch"):
            dm.setup()


def test_each_view_has_its_own_date(tmp_path: Path) -> None:
    """dates in meta.yaml reach the batch per view; the folder writer and reader round-trip them."""
    from floodlora.data.sources import read_sample

    dry = np.full((16, 16), -10.0, np.float32)
    meta = SampleMeta("c", "ev", "folder", "db", date="2021-05-01", dates={"pre": "2021-03-01"})
    views = {"pre": {"vv": dry, "vh": dry}, "post": {"vv": dry, "vh": dry}}
    write_sample(Sample(views, np.zeros((16, 16), np.uint8), meta), tmp_path / "train" / "c")
    write_dataset_yaml(tmp_path, "db", ["pre", "post"], ["vv", "vh"], "ev")
    (ref,) = discover([tmp_path])
    assert read_sample(ref).meta.dates == {"pre": "2021-03-01"}
    item = FloodDataset([ref], {"folder": PRESETS["clay-v1.5"]}, crop_size=None)[0]
    np.testing.assert_allclose(item["time"]["pre"].numpy(), encode_time("2021-03-01"))
    np.testing.assert_allclose(item["time"]["post"].numpy(), encode_time("2021-05-01"))
    assert not np.allclose(encode_time("2021-03-01"), encode_time("2021-05-01"))


def test_time_and_latlon_encoding() -> None:
    t = encode_time("2017-02-13T06:00:00")
    w = 7 * 2 * math.pi / 52
    np.testing.assert_allclose(t, [math.sin(w), math.cos(w), 1.0, 0.0], atol=1e-6)
    assert not encode_time(None).any() and not encode_latlon(None, 5.0).any()
    np.testing.assert_allclose(encode_latlon(90.0, 180.0), [1.0, 0.0, 0.0, -1.0], atol=1e-6)


def test_datamodule_splits_holdout_and_batches(syn: Path) -> None:
    cfg = DataConfig(roots=[str(syn)], crop_size=32, batch_size=4, holdout_events=["synthetic-ood-*"], seed=1)
    dm = FloodDataModule(cfg)
    info = dm.describe()
    assert info["splits"]["ood"] == 3
    assert info["splits"]["train"] + info["splits"]["val"] + info["splits"]["test"] == 12 - sum(
        info["skipped_nodata"].values()
    )
    assert {r.event for r in dm.splits["ood"]} == {"synthetic-ood-9"}
    assert all(r.event == "synthetic-in" for s in ("train", "val", "test") for r in dm.splits[s])
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["views"]) == {"pre", "post"}
    assert batch["views"]["post"].shape == (4, 2, 32, 32) and batch["views"]["post"].dtype == torch.float32
    assert batch["mask"].dtype == torch.uint8 and batch["valid"].dtype == torch.bool
    assert (
        batch["time"]["post"].shape == (4, 4)
        and batch["latlon"].shape == (4, 4)
        and len(batch["chip_id"]) == 4
    )
    # synthetic scenes date each view: the pre-event pass 12 days (about 2 ISO weeks) before the post
    assert not torch.allclose(batch["time"]["pre"], batch["time"]["post"])
    ood = next(iter(dm.ood_dataloader()))
    assert ood["views"]["pre"].shape[-2:] == (48, 48)  # eval: full chip
    # deterministic: same config, same splits and the same first training batch
    dm2 = FloodDataModule(cfg)
    assert [r.chip_id for r in dm2.dataset("train").refs] == [r.chip_id for r in dm.dataset("train").refs]
    b2 = next(iter(dm2.train_dataloader()))
    torch.testing.assert_close(b2["views"]["post"], batch["views"]["post"])


def test_native_splits_and_limit(syn: Path) -> None:
    refs = discover([syn / "in"])
    native = {r.chip_id: r.split for r in refs}
    splits = assign_splits(refs, DataConfig(val_fraction=0.0, test_fraction=0.0))
    assert {r.chip_id for r in splits["test"]} == {c for c, s in native.items() if s == "test"}
    limited = assign_splits(refs, DataConfig(limit_train=3))
    assert len(limited["train"]) == 3


def test_missing_view_omitted_missing_band_zero(tmp_path: Path) -> None:
    vv = np.full((16, 16), -10.0, np.float32)
    s = Sample({"post": {"vv": vv}}, np.zeros((16, 16), np.uint8), SampleMeta("c1", "ev", "folder", "db"))
    write_sample(s, tmp_path / "all" / "c1")
    write_dataset_yaml(tmp_path, "db", ["post"], ["vv"], "ev")
    ds = FloodDataset(
        discover([tmp_path]), {"folder": PRESETS["clay-v1.5"]}, views=["pre", "post"], crop_size=16
    )
    item = ds[0]
    assert set(item["views"]) == {"post"} and item["missing_bands"] == ["vh"]
    assert item["views"]["post"].shape == (2, 16, 16) and float(item["views"]["post"][1].abs().sum()) == 0.0


def test_collate_pads_mixed_sizes_and_drops_partial_views() -> None:
    def item(h: int, views: tuple[str, ...]) -> dict:
        return {
            "views": {v: torch.ones(2, h, h) for v in views},
            "mask": torch.ones(h, h, dtype=torch.uint8),
            "valid": torch.ones(h, h, dtype=torch.bool),
            "time": torch.zeros(4),
            "latlon": torch.zeros(4),
            "chip_id": f"c{h}",
            "event": "e",
            "missing_bands": [],
        }

    b = collate([item(16, ("pre", "post")), item(8, ("post",))])
    assert set(b["views"]) == {"post"} and b["dropped_views"] == ["pre"]
    assert b["views"]["post"].shape == (2, 2, 16, 16)
    assert int(b["mask"][1, 8:, :].unique().item()) == 255 and not b["valid"][1, 8:, :].any()
    assert b["valid"][1, :8, :8].all()


def test_nodata_chips_skipped(tmp_path: Path) -> None:
    for i, frac in enumerate((0.0, 0.8)):
        vv = np.full((16, 16), -10.0, np.float32)
        vv[: int(16 * frac)] = np.nan
        s = Sample(
            {"post": {"vv": vv}}, np.zeros((16, 16), np.uint8), SampleMeta(f"c{i}", "ev", "folder", "db")
        )
        write_sample(s, tmp_path / "train" / f"c{i}")
    write_dataset_yaml(tmp_path, "db", ["post"], ["vv"], "ev")
    dm = FloodDataModule(
        DataConfig(roots=[str(tmp_path)], crop_size=16, val_fraction=0.0, max_nodata_fraction=0.5)
    )
    dm.setup()
    assert [r.chip_id for r in dm.splits["train"]] == ["c0"] and dm.skipped["train"] == ["c1"]


def test_real_scaled_uint8_auto_normalisation(real_data: Path) -> None:
    cfg = DataConfig(roots=[str(real_data / "ombria" / "2021")], crop_size=64, batch_size=2)
    dm = FloodDataModule(cfg)
    preset = dm.presets if dm.presets else (dm.setup() or dm.presets)
    p = preset["ombria"]
    assert p.units == "scaled-uint8" and 50 < p.mean["vv"] < 200
    x = torch.cat([dm.dataset("train")[i]["views"]["post"][0].flatten() for i in range(8)])
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 1.5  # roughly zero-mean, unit variance


def test_whole_chips_are_the_training_chips_as_evaluation_reads_them(syn: Path) -> None:
    cfg = DataConfig(roots=[str(syn)], crop_size=32, augment=True, intensity_jitter=0.5, seed=1)
    dm = FloodDataModule(cfg)
    whole = dm.whole_chips("train")
    assert [r.chip_id for r in whole.refs] == [r.chip_id for r in dm.splits["train"]]
    crop, item = dm.dataset("train")[0], whole[0]
    assert crop["views"]["post"].shape[-2:] == (32, 32)
    assert item["views"]["post"].shape[-2:] == (48, 48)  # whole, as the val loader reads it
    # no flip, rotation or jitter: the same pixels as the evaluation reader gives for the same chip
    val_reader = FloodDataset(whole.refs, dm.presets, cfg.views, cfg.bands, crop_size=None, train=False)
    torch.testing.assert_close(item["views"]["post"], val_reader[0]["views"]["post"])
    torch.testing.assert_close(whole[0]["views"]["post"], item["views"]["post"])  # deterministic
