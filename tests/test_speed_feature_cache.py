"""Frozen-strategy feature cache: same decoder gradients as live encoding, aligned augmentation, wiring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from floodlora.config import DataConfig, ModelConfig, RunConfig
from floodlora.data.datamodule import FloodDataModule, FloodDataset, collate
from floodlora.data.feature_cache import INDEX_FILE, CachedFeatureDataset, FeatureCache, collate_features
from floodlora.errors import ConfigError
from floodlora.models.factory import build_segmentor
from floodlora.training.feature_cache import build_feature_cache, feature_cache_plan, prepare_feature_cache
from floodlora.training.task import FloodSegmentationTask

VIEWS = ["pre", "post"]
BANDS = ["vv", "vh"]


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from floodlora.data.synthetic import write_folder_dataset

    root = tmp_path_factory.mktemp("cache-data") / "syn"
    write_folder_dataset(root, 6, 32, splits={"train": 0.67, "val": 0.33})
    return root


def _run_config(root: Path, strategy: str = "frozen") -> RunConfig:
    cfg = RunConfig()
    cfg.data = DataConfig(roots=[str(root)], views=VIEWS, bands=BANDS, crop_size=32, batch_size=2,
                          augment=False, max_nodata_fraction=1.0)  # fmt: skip
    cfg.model = ModelConfig(checkpoint="random:test-micro", strategy=strategy, lora_rank=2)
    cfg.train.feature_cache = True
    cfg.train.max_epochs = 2
    return cfg


def _decoder_grads(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    task = FloodSegmentationTask(model)
    model.zero_grad(set_to_none=True)
    logits = task(batch)
    loss, _ = task._loss(logits, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_cached_and_live_training_give_the_same_decoder_gradients(chips: Path, tmp_path: Path) -> None:
    config = _run_config(chips)
    dm = FloodDataModule(config.data)
    dm.setup("fit")
    torch.manual_seed(0)
    model = build_segmentor(config.model, VIEWS, BANDS, 32).train()
    cached_dm = prepare_feature_cache(config, model, dm, tmp_path / "cache")
    refs = dm.splits["train"]
    assert len(cached_dm.train_set) == len(refs) >= 2

    live_ds = FloodDataset(refs, dm.presets, VIEWS, BANDS, crop_size=32, train=False)
    cached_ds = CachedFeatureDataset(cached_dm.train_set.cache, crop_size=32, train=False)
    live = collate([live_ds[0], live_ds[1]])
    cached = collate_features([cached_ds[0], cached_ds[1]])
    assert cached["chip_id"] == live["chip_id"]
    assert torch.equal(cached["mask"], live["mask"]) and torch.equal(cached["valid"], live["valid"])

    loss_live, g_live = _decoder_grads(model, live)
    loss_cached, g_cached = _decoder_grads(model, cached)
    assert g_live.keys() == g_cached.keys() and g_live
    assert all(n.startswith(("decoders.", "stems.", "head.")) for n in g_live), (
        "frozen: only the decoder trains"
    )
    assert any(n.startswith("stems.") for n in g_live)  # the hires pixel path reads the cached pixels
    assert torch.allclose(loss_live, loss_cached, atol=1e-5)
    for name in g_live:
        assert torch.allclose(g_live[name], g_cached[name], atol=1e-5), name


class _PoolEncoder:
    """A stand-in segmentor whose 'token' is the mean of the first band over each 8 x 8 patch."""

    views = ("pre",)
    patch_size = 8
    encoder_dim = 1
    strategy = "frozen"

    def __init__(self) -> None:
        self.encoder = nn.Linear(1, 1)
        self.waves = torch.zeros(2)

    def encode(self, views: dict[str, torch.Tensor], time: Any, latlon: Any) -> dict[str, torch.Tensor]:
        return {"pre": F.avg_pool2d(views["pre"][:, :1], 8)}


def test_crops_and_rotations_keep_tokens_over_their_pixels(tmp_path: Path) -> None:
    """Encode the mask itself; after any crop / rot90 / flip, token (i, j) must still be its patch's mean."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        mask = torch.from_numpy(rng.integers(0, 2, (64, 64), dtype=np.uint8))
        pre = torch.stack([mask.float(), torch.zeros(64, 64)])
        valid = torch.ones(64, 64, dtype=torch.bool)
        meta = {"time": torch.zeros(4), "latlon": torch.zeros(4), "chip_id": f"c{i}", "event": "e"}
        items.append({"views": {"pre": pre}, "mask": mask, "valid": valid, **meta})
    cache = build_feature_cache(_PoolEncoder(), items, tmp_path / "c", key="k", min_size=32)
    ds = CachedFeatureDataset(cache, crop_size=32, train=True, augment=True, seed=3)
    seen = set()
    for _ in range(12):
        for i in range(len(ds)):
            item = ds[i]
            tokens = item["features"]["pre"]
            assert tokens.shape == (1, 4, 4) and item["mask"].shape == (32, 32)
            expected = F.avg_pool2d(item["mask"].float()[None, None], 8)[0]
            assert torch.allclose(tokens, expected), "token grid and mask were transformed differently"
            seen.add(tuple(item["mask"][:8, :8].flatten().tolist()))
    assert len(seen) > 6, "crops / augmentation should vary between draws"


def test_cache_is_reused_and_rebuilt_when_the_key_changes(tmp_path: Path) -> None:
    items = [{"views": {"pre": torch.rand(2, 16, 16)}, "mask": torch.zeros(16, 16, dtype=torch.uint8),
              "valid": torch.ones(16, 16, dtype=torch.bool), "time": torch.zeros(4),
              "latlon": torch.zeros(4), "chip_id": "a", "event": "e"}]  # fmt: skip
    first = build_feature_cache(_PoolEncoder(), items, tmp_path / "c", key="one")
    stamp = (first.directory / INDEX_FILE).stat().st_mtime_ns
    again = build_feature_cache(_PoolEncoder(), items, tmp_path / "c", key="one")
    assert (again.directory / INDEX_FILE).stat().st_mtime_ns == stamp
    other = build_feature_cache(_PoolEncoder(), items, tmp_path / "c", key="two")
    assert other.key == "two" and FeatureCache(tmp_path / "c").key == "two"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory left"


def test_train_run_with_feature_cache(chips: Path, tmp_path: Path) -> None:
    from floodlora.training.engine import train_run

    config = _run_config(chips)
    config.data.augment = True
    result = train_run(config, tmp_path / "run")
    info = result.accounting["feature_cache"]
    assert info["chips"]["train"] >= 2 and info["bytes"] > 0
    index = json.loads((Path(info["dirs"]["train"]) / INDEX_FILE).read_text())
    assert index["dim"] == 64 and index["patch"] == 8
    assert result.metrics["val"]["n_chips"] >= 1


def test_feature_cache_needs_the_frozen_strategy(chips: Path, tmp_path: Path) -> None:
    from floodlora.training.engine import train_run

    with pytest.raises(ConfigError, match=r"feature_cache needs model\.strategy: frozen"):
        train_run(_run_config(chips, "lora"), tmp_path / "run")


def test_auto_builds_the_cache_only_where_it_encodes_fewer_pixels(chips: Path) -> None:
    config = _run_config(chips)
    config.train.feature_cache = "auto"
    dm = FloodDataModule(config.data)
    dm.setup("fit")
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])
    assert n_train >= 3 and n_val >= 1
    px = 32 * 32  # chips and crops are 32 px
    plan = feature_cache_plan(config, dm)  # 2 epochs, every batch: each chip is encoded twice live
    assert plan["cached_pixels"] == (n_train + n_val) * px
    per_epoch = -(-n_train // 2) * 2 * px + n_val * px
    assert plan["live_pixels"] == 2 * per_epoch and plan["use"] is True
    config.train.max_epochs, config.train.limit_train_batches = 1, 1  # one batch: live encodes less
    plan = feature_cache_plan(config, dm)
    assert plan["live_pixels"] == 2 * px + n_val * px and plan["use"] is False
    assert plan["reason"] == "live training encodes fewer pixels"
    config.model.strategy = "lora"
    plan = feature_cache_plan(config, dm)
    assert plan == {"setting": "auto", "use": False, "reason": "the lora strategy trains the encoder"}
    config.train.feature_cache = True
    assert feature_cache_plan(config, dm) == {"setting": True, "use": True}


def test_train_run_with_auto_skips_a_cache_that_costs_more(chips: Path, tmp_path: Path) -> None:
    from floodlora.training.engine import train_run

    config = _run_config(chips)
    config.train.feature_cache = "auto"
    config.train.max_epochs, config.train.limit_train_batches = 1, 1
    lines: list[str] = []
    result = train_run(config, tmp_path / "run", log=lines.append)
    assert "feature_cache" not in result.accounting and not (tmp_path / "run" / "feature_cache").exists()
    assert result.accounting["feature_cache_plan"]["use"] is False
    assert "feature cache: off (live training encodes fewer pixels)" in lines
    assert result.metrics["val"]["n_chips"] >= 1


def test_feature_cache_setting_is_checked() -> None:
    from floodlora.config import load_config

    assert load_config("cpu-small", {"train.feature_cache": "auto"}).train.feature_cache == "auto"
    with pytest.raises(ConfigError, match=r"feature_cache: 'sometimes' is not one of true, false, auto"):
        load_config("cpu-small", {"train.feature_cache": "sometimes"})
