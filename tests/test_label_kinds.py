"""One output per label kind: new flood water (OMBRIA) and all water (ETCI, C2S-MS, Sen1Floods11).

Each chip must train only its own kind's channel, the kind must come from the chip's source, and a
run must keep its outputs through save, load, adapters and export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from floodlora.config import ModelConfig, RunConfig
from floodlora.errors import ConfigError, DataError
from floodlora.models.clay import ClayEncoder, get_preset
from floodlora.models.factory import build_segmentor
from floodlora.models.segmentor import FloodSegmentor
from floodlora.runs import load_run, save_run
from floodlora.training.task import FloodSegmentationTask

KINDS = ("flood", "water")


def _model(outputs: tuple[str, ...] = KINDS, **kw) -> FloodSegmentor:
    torch.manual_seed(0)
    return FloodSegmentor(ClayEncoder(get_preset("test-micro")), outputs=outputs, decoder="hires", **kw)


def _views(views: tuple[str, ...] = ("pre", "post"), b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {v: torch.randn(b, 2, 32, 32, generator=g) for v in views}


def test_forward_gives_one_channel_and_forward_all_one_per_kind() -> None:
    model = _model().eval()
    x = _views()
    every = model.forward_all(x)
    assert every.shape == (2, 2, 32, 32)
    # with a pre view the default output is flood; post only: water
    assert torch.equal(model(x), every[:, :1])
    post_only = model.forward_all({"post": x["post"]})
    assert torch.equal(model({"post": x["post"]}), post_only[:, 1:2])
    model.target = "water"
    assert torch.equal(model(x), every[:, 1:2])


def test_select_outputs_picks_each_chips_own_kind() -> None:
    model = _model()
    logits = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), 2.0)])[None].repeat(3, 1, 1, 1)
    picked = model.select_outputs(logits, ["water", "flood", "water"], ["post"])
    assert picked.shape == (3, 1, 4, 4)
    assert picked[:, 0, 0, 0].tolist() == [2.0, 1.0, 2.0]
    single = _model(outputs=("flood",))
    one = logits[:, :1]
    assert torch.equal(single.select_outputs(one, ["water", "flood", "water"], ["post"]), one)


def test_a_chip_trains_only_its_own_kinds_channel() -> None:
    model = _model()
    task = FloodSegmentationTask(model)
    batch = {
        "views": _views(("post",)),
        "mask": torch.randint(0, 2, (2, 32, 32), dtype=torch.uint8),
        "valid": torch.ones(2, 32, 32, dtype=torch.bool),
        "label_kind": ["water", "water"],
    }
    loss, _ = task._loss(task(batch), batch)
    loss.backward()
    last = model.head.net[-1]
    assert last.weight.grad.shape[0] == 2
    assert float(last.weight.grad[0].abs().sum()) == 0.0  # flood channel untouched
    assert float(last.weight.grad[1].abs().sum()) > 0.0


@pytest.mark.parametrize(
    "outputs", [[], ["flood", "flood"], ["river"]], ids=["empty", "duplicate", "unknown"]
)
def test_bad_outputs_are_config_errors(outputs: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"model\.outputs"):
        ModelConfig(outputs=outputs)
    with pytest.raises(ValueError, match="outputs must be"):
        _model(outputs=tuple(outputs))


def test_asking_for_a_kind_the_model_lacks_fails() -> None:
    model = _model(outputs=("water", "flood"))
    model.target = "water"
    assert model.output_index(None, ["pre", "post"]) == 0
    with pytest.raises(ValueError, match="no 'snow' output"):
        model.output_index("snow")


def test_outputs_survive_save_and_load(tmp_path: Path) -> None:
    cfg = RunConfig()
    cfg.model.checkpoint = "random:test-micro"
    cfg.model.lora_rank = 2
    cfg.model.outputs = ["flood", "water"]
    model = build_segmentor(cfg.model, ["pre", "post"], ["vv", "vh"])
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    x = _views(b=1)
    expected = model.forward_all(x)
    save_run(tmp_path / "run", cfg, model)
    loaded = load_run(tmp_path / "run")
    assert loaded.model.outputs == ("flood", "water")
    assert loaded.base["outputs"] == ["flood", "water"]
    assert torch.allclose(loaded.model.forward_all(x), expected, atol=1e-6)


def test_feature_cache_keeps_each_chips_label_kind(tmp_path: Path) -> None:
    from floodlora.data.feature_cache import CachedFeatureDataset, collate_features
    from floodlora.training.feature_cache import build_feature_cache

    model = _model().eval()
    items = [
        {"views": {v: torch.rand(2, 32, 32) for v in ("pre", "post")},
         "mask": torch.zeros(32, 32, dtype=torch.uint8), "valid": torch.ones(32, 32, dtype=torch.bool),
         "time": torch.zeros(4), "latlon": torch.zeros(4), "chip_id": f"c{i}", "event": "e",
         "label_kind": kind}
        for i, kind in enumerate(("water", "flood", "water"))
    ]  # fmt: skip
    cache = build_feature_cache(model, items, tmp_path / "c", key="k", min_size=32)
    ds = CachedFeatureDataset(cache)
    batch = collate_features([ds[i] for i in range(len(ds))])
    assert batch["label_kind"] == ["water", "flood", "water"]
    task = FloodSegmentationTask(model)
    with torch.no_grad():
        picked = task(batch)
        every = model.decode(batch["features"], batch["views"])
    assert torch.equal(picked[:, 0], torch.stack([every[0, 1], every[1, 0], every[2, 1]]))


def test_sources_declare_what_their_labels_mark(real_data: Path) -> None:
    from floodlora.data.sources import discover

    kinds = {}
    for sub in ("ombria/2021/FRANCE", "etci2021/northal_20190302t234651", "c2s_ms_floods", "sen1floods11"):
        refs = discover([real_data / sub])
        kinds[sub.split("/")[0]] = {r.label_kind for r in refs}
    assert kinds == {
        "ombria": {"flood"},
        "etci2021": {"water"},
        "c2s_ms_floods": {"water"},
        "sen1floods11": {"water"},
    }


def test_dataset_items_carry_the_label_kind(real_data: Path) -> None:
    from floodlora.data.datamodule import FloodDataset, collate, resolve_presets
    from floodlora.data.sources import discover

    refs = discover([real_data / "ombria" / "2021" / "FRANCE"])[:1]
    refs += discover([real_data / "c2s_ms_floods"])[:1]
    presets = resolve_presets("auto", refs, refs)
    ds = FloodDataset(refs, presets, ["pre", "post"], ["vv", "vh"], crop_size=64)
    batch = collate([ds[0], ds[1]])
    assert batch["label_kind"] == ["flood", "water"]


def test_folder_dataset_declares_its_labels(tmp_path: Path) -> None:
    from floodlora.data.sources import folder

    root = tmp_path / "ds"
    (root / "chips" / "c1").mkdir(parents=True)
    import rasterio

    for name, arr in (("post", np.zeros((2, 16, 16), np.float32)), ("mask", np.zeros((1, 16, 16), np.uint8))):
        with rasterio.open(
            root / "chips" / "c1" / f"{name}.tif", "w", driver="GTiff", width=16, height=16,
            count=arr.shape[0], dtype=arr.dtype,
        ) as ds:  # fmt: skip
            ds.write(arr)
    (root / "dataset.yaml").write_text("units: db\nviews: [post]\nlabels: water\n")
    assert [r.label_kind for r in folder.discover(root)] == ["water"]
    (root / "dataset.yaml").write_text("units: db\nviews: [post]\n")
    assert [r.label_kind for r in folder.discover(root)] == ["flood"]  # the default
    (root / "dataset.yaml").write_text("units: db\nviews: [post]\nlabels: lakes\n")
    with pytest.raises(DataError, match=r"dataset\.yaml: labels must be flood .* got 'lakes'"):
        folder.discover(root)


def test_calibration_moves_each_outputs_threshold_to_one_half() -> None:
    model = _model().eval()
    x = _views()
    before = torch.sigmoid(model.forward_all(x))
    offsets = model.calibrate_outputs({"water": 0.9})
    after = torch.sigmoid(model.forward_all(x))
    assert torch.equal(after[:, 0], before[:, 0])  # flood untouched
    # a pixel at the old water threshold 0.9 now sits at 0.5: logits moved by -logit(0.9)
    assert offsets == {"water": pytest.approx(float(torch.logit(torch.tensor(0.9))), abs=1e-6)}
    z_before, z_after = torch.logit(before[:, 1].double()), torch.logit(after[:, 1].double())
    assert torch.allclose(z_before - z_after, torch.full_like(z_before, offsets["water"]), atol=1e-4)


def test_engine_calibrates_each_kind_on_its_own_val_chips() -> None:
    from floodlora.metrics import ChipConfusion
    from floodlora.training.engine import calibrate_outputs_on

    model = _model()
    chips = ChipConfusion()
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 16, 16, generator=g) < 0.3).to(torch.uint8)
    # water chips: flood pixels at p 0.85, dry at 0.7 -> best threshold near 0.8; flood chips: 0.6 / 0.2
    water = torch.where(mask.bool(), 0.85, 0.7)[:, None]
    flood = torch.where(mask.bool(), 0.6, 0.2)[:, None]
    chips.update(water, mask, None, ["w1", "w2"], ["e", "e"], kinds=["water", "water"])
    chips.update(flood, mask, None, ["f1", "f2"], ["e", "e"], kinds=["flood", "flood"])
    assert int(chips.total("water").sum()) == 2 * 256 and int(chips.total().sum()) == 4 * 256
    report = calibrate_outputs_on(model, chips)
    assert 0.7 < report["water"]["threshold"] <= 0.85
    assert 0.2 < report["flood"]["threshold"] <= 0.6
    assert calibrate_outputs_on(_model(outputs=("flood",)), chips) == {}
    # adapt --method calibrate: a one-output model's channel answers every chip, whatever its kind
    (single,) = calibrate_outputs_on(_model(outputs=("flood",)), chips, single=True).items()
    assert single[0] == "flood" and 0.0 < single[1]["threshold"] <= 0.85


def test_moved_histograms_match_a_second_pass_of_the_calibrated_model() -> None:
    """Moving val histograms through the calibration shift gives the second pass's counts at 0.5 exactly
    and every other threshold's counts within one bin, without running the model again."""
    from floodlora.metrics import ChipConfusion, counts_at
    from floodlora.training.engine import calibrate_outputs_on, calibrated_chips

    model = _model().eval()
    with torch.no_grad():  # spread the probabilities over most of (0, 1), as a trained model's are
        model.head.net[-1].weight.mul_(60)
    x = _views(b=6)
    n = x["post"].shape[0]
    kinds = ["water" if i % 2 else "flood" for i in range(n)]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # labels that follow the model, noisily, so each best threshold is inside (0, 1)
        own = torch.sigmoid(model.forward_all(x))[torch.arange(n), [model.outputs.index(k) for k in kinds]]
    target = (own + 0.15 * torch.randn(own.shape, generator=g) > 0.45).to(torch.uint8)

    def score() -> ChipConfusion:
        chips = ChipConfusion()
        with torch.no_grad():
            probs = torch.sigmoid(model.forward_all(x))
        for i, kind in enumerate(kinds):
            p = probs[i : i + 1, model.outputs.index(kind)][:, None]
            chips.update(p, target[i : i + 1], None, [f"c{i}"], ["e"], kinds=[kind])
        return chips

    before = score()
    calibration = calibrate_outputs_on(model, before)
    assert set(calibration) == {"flood", "water"}
    assert all(0.05 < c["threshold"] < 0.95 and c["threshold"] != 0.5 for c in calibration.values())
    moved, again = calibrated_chips(before, calibration), score()
    assert int(moved.total().sum()) == int(again.total().sum()) == int(before.total().sum())
    for kind in ("flood", "water"):
        assert counts_at(moved.total(kind), 0.5) == counts_at(again.total(kind), 0.5)
        t = calibration[kind]["threshold"]
        assert counts_at(moved.total(kind), 0.5) == counts_at(before.total(kind), t)
    for t in (0.3, 0.7):  # elsewhere the two differ by at most the pixels of the bins next to t
        k = round(t * 100)
        slack = int(again.total()[:, k - 1 : k + 1].sum() + moved.total()[:, k - 1 : k + 1].sum())
        diff = abs(counts_at(moved.total(), t)["tp"] - counts_at(again.total(), t)["tp"])
        assert diff <= slack
    single = calibrated_chips(before, {"flood": {"threshold": 0.3, "logit_offset": -0.8473}}, single=True)
    assert counts_at(single.total(), 0.5) == counts_at(before.total(), 0.3)  # every chip, whatever its kind


def test_moved_to_half_refuses_a_threshold_at_the_ends() -> None:
    from floodlora.metrics import ChipConfusion

    chips = ChipConfusion()
    chips.update(torch.full((1, 1, 4, 4), 0.7), torch.ones(1, 4, 4, dtype=torch.uint8), None, ["a"], ["e"])
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\), got 1.0"):
        chips.moved_to_half({"flood": 1.0})
