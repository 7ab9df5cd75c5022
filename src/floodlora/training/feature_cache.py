"""Frozen-encoder feature cache: encode every chip once, then train only the decoder.

Why. With the frozen strategy the encoder is a fixed function, yet a plain training loop runs it on
every chip in every epoch; at 512 px with four views that is nearly the whole step. The cache runs
it once per chip (eval mode, no grad) on the un-augmented chip, keeps the token grids on disk in one
memory-mapped file, and serves them with the masks; training then calls ``model.decode`` only.
This module builds the cache (it runs the encoder); floodlora.data.feature_cache reads and serves it
(``FeatureCache``, ``CachedFeatureDataset``, ``CachedFeatureDataModule``).

Augmentation stays compatible. Token (i, j) covers pixels [p*i, p*i+p) x [p*j, p*j+p), so rot90 and
flips of the pixel grid are exactly rot90 and flips of the token grid: the same transform is applied
to the token grids [D, h, w] and to the mask and valid map [H, W], and random crops are aligned to
the token grid. Two things differ from live training, by construction: an encoder is not
rotation-equivariant (a rotated token grid is not the encoding of the rotated chip), and a crop of a
whole-chip encoding carries context from outside the crop. Without augmentation and with the crop
equal to the chip (the reference method's 512 px chips) cached training *is* live training
(``tests/test_speed_feature_cache.py`` checks the decoder gradients).

On disk, one directory per split and cache key (base checkpoint fingerprint, encoder size, views,
bands, normalisation, chips): ``features.f32`` (raw float32, chip after chip, [V_i, D, h_i, w_i]),
``mask.u8`` and ``valid.u8`` (chip after chip, [H_i, W_i]) and ``index.json`` (shapes, offsets,
chip ids), written last as the completeness marker, the whole directory renamed into place.
Non-square chips are centre-cropped to a square (Clay's encoder needs one); chips smaller than
the crop size are padded with nodata, as the live data pipeline does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from floodlora.config import DEFAULT_LABEL_KIND, FEATURE_CACHE_AUTO, RunConfig
from floodlora.data.feature_cache import (
    CACHE_VERSION,
    FEATURES_FILE,
    INDEX_FILE,
    MASK_FILE,
    PIXELS_FILE,
    VALID_FILE,
    CachedFeatureDataModule,
    FeatureCache,
)
from floodlora.data.sample import MASK_NODATA, centre_window
from floodlora.errors import ConfigError, DataError
from floodlora.models.strategies import REGISTRY, strategy_class


def check_feature_cache_config(config: RunConfig) -> None:
    """Fail early, in one line, when `train.feature_cache` cannot apply to this run (``auto`` always can:
    it falls back to live training)."""
    if config.train.feature_cache is not True:
        return
    if not strategy_class(config.model.strategy).constant_encoder:
        constant = " | ".join(n for n, cls in REGISTRY.items() if cls.constant_encoder)
        raise ConfigError(
            f"train.feature_cache needs model.strategy: {constant} (a cached encoder output would go stale "
            f"while the encoder trains); got {config.model.strategy!r}"
        )
    if config.train.devices * config.train.num_nodes > 1:
        raise ConfigError("train.feature_cache runs in a single process; set train.devices: 1, num_nodes: 1")


def _batches(n_items: int, batch_size: int, limit: int | float | None) -> int:
    """Batches Lightning runs per epoch over `n_items` under a limit_*_batches setting."""
    full = math.ceil(n_items / batch_size)
    if limit is None:
        return full
    if isinstance(limit, float):
        return min(full, math.ceil(full * limit)) if limit <= 1.0 else full
    return min(full, int(limit))


def _mean_chip_pixels(datamodule: Any, split: str) -> float:
    """Mean pixels the cache stores per chip of a split (its centred square), from one decoded chip per
    source format (chips of a format share a size), weighted by each format's chip count."""
    refs = datamodule.splits.get(split) or []
    if not refs:
        return 0.0
    dataset = datamodule.dataset(split)
    first: dict[str, int] = {}
    counts: dict[str, int] = {}
    for i, ref in enumerate(refs):
        first.setdefault(ref.format, i)
        counts[ref.format] = counts.get(ref.format, 0) + 1
    pixels = {fmt: min(dataset.load(i).valid.shape) ** 2 for fmt, i in first.items()}  # cached square
    return sum(pixels[f] * counts[f] for f in counts) / len(refs)


def feature_cache_plan(config: RunConfig, datamodule: Any) -> dict[str, Any]:
    """Whether this run builds the feature cache, and why (recorded in accounting.json).

    The cache encodes every train and val chip once, whole; live training encodes each step's crops
    and each epoch's val batches. With a short budget (a few batches per epoch, crops smaller than
    the chips) live training encodes fewer pixels and the cache costs more than it saves, as in the
    quality benchmark's frozen rows (docs/quality.md).
    ``true`` / ``false`` are followed as given; ``auto`` compares the two pixel counts (views and
    per-pixel cost are the same on both sides).
    """
    tcfg, data = config.train, config.data
    setting = tcfg.feature_cache
    if setting != FEATURE_CACHE_AUTO:
        return {"setting": setting, "use": bool(setting)}
    if not strategy_class(config.model.strategy).constant_encoder:
        reason = f"the {config.model.strategy} strategy trains the encoder"
        return {"setting": setting, "use": False, "reason": reason}
    if tcfg.devices * tcfg.num_nodes > 1:
        return {"setting": setting, "use": False, "reason": "the cache runs in a single process"}
    n_train = len(datamodule.splits.get("train") or [])
    n_val = len(datamodule.splits.get("val") or [])
    train_px = _mean_chip_pixels(datamodule, "train")
    val_px = _mean_chip_pixels(datamodule, "val")
    crop_px = min(float(data.crop_size**2), train_px) if data.crop_size else train_px
    per_epoch = (
        _batches(n_train, data.batch_size, tcfg.limit_train_batches) * data.batch_size * crop_px
        + min(n_val, _batches(n_val, data.batch_size, tcfg.limit_val_batches) * data.batch_size) * val_px
    )
    live = tcfg.max_epochs * per_epoch
    cached = n_train * train_px + n_val * val_px
    return {
        "setting": setting,
        "use": cached < live,
        "cached_pixels": round(cached),
        "live_pixels": round(live),
        "reason": "the cache encodes fewer pixels" if cached < live else "live training encodes fewer pixels",
    }


# --------------------------------------------------------------------------------------------------
# Geometry of a cached chip
# --------------------------------------------------------------------------------------------------


def square_chip(item: dict[str, Any], min_size: int) -> dict[str, Any]:
    """Centre-crop an item's views / mask / valid to a square; pad (nodata) up to `min_size`."""
    h, w = (int(s) for s in item["mask"].shape)
    side = min(h, w)
    rows, cols = centre_window(h, w, side, side)
    views = {v: t[:, rows, cols] for v, t in item["views"].items()}
    mask, valid = item["mask"][rows, cols], item["valid"][rows, cols]
    if side < min_size:
        pad = (0, min_size - side, 0, min_size - side)
        views = {v: torch.nn.functional.pad(t, pad) for v, t in views.items()}
        mask = torch.nn.functional.pad(mask, pad, value=MASK_NODATA)
        valid = torch.nn.functional.pad(valid.to(torch.uint8), pad).bool()
    return {**item, "views": views, "mask": mask, "valid": valid}


# --------------------------------------------------------------------------------------------------
# Building the cache (runs the encoder; floodlora.data.feature_cache reads and serves it)
# --------------------------------------------------------------------------------------------------


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 of everything the cached numbers depend on (JSON, sorted keys)."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _autocast(device: torch.device, precision: str | None) -> Any:
    """The run's autocast for the encoder pass: bf16 on CUDA or on a CPU where the run chose bf16
    (floodlora.precision), fp16 on CUDA only."""
    if precision and precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cuda" and precision and precision.startswith("16"):
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def build_feature_cache(
    model: Any,
    dataset: Dataset,
    directory: str | Path,
    key: str,
    min_size: int = 0,
    device: torch.device | str = "cpu",
    precision: str | None = None,
) -> FeatureCache:
    """Encode every item of `dataset` once with `model.encode` and write the cache to `directory`.

    `dataset` must yield un-augmented items in the batch-item format of the data pipeline (use a
    FloodDataset with ``train=False``). An existing complete cache with the same `key` is reused.
    """
    directory = Path(directory)
    if (directory / INDEX_FILE).is_file():
        existing = FeatureCache(directory)
        if existing.key == key:
            return existing
        shutil.rmtree(directory)
    device = torch.device(device)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    encoder = model.encoder
    was_training = encoder.training
    original_device = next(encoder.parameters()).device
    encoder.eval()
    encoder.to(device)
    waves = model.waves
    model.waves = waves.to(device)
    chips: list[dict[str, Any]] = []
    offset = pixel_offset = image_offset = channels = 0
    try:
        with (
            open(tmp / FEATURES_FILE, "wb") as f_feat,
            open(tmp / MASK_FILE, "wb") as f_mask,
            open(tmp / VALID_FILE, "wb") as f_valid,
            open(tmp / PIXELS_FILE, "wb") as f_pix,
            torch.inference_mode(),
        ):
            for i in range(len(dataset)):  # type: ignore[arg-type]
                item = square_chip(dataset[i], min_size)
                present = [v for v in model.views if v in item["views"]]
                if not present:
                    raise DataError(f"{item['chip_id']}: none of the model's views {list(model.views)}")
                views = {v: item["views"][v][None].to(device) for v in present}
                with _autocast(device, precision):
                    time = item["time"]
                    time = (
                        {v: t[None].to(device) for v, t in time.items()}
                        if isinstance(time, dict)
                        else time[None].to(device)
                    )
                    grids = model.encode(views, time, item["latlon"][None].to(device))
                block = torch.cat([grids[v].float() for v in present]).cpu().numpy()  # [V, D, h, w]
                f_feat.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
                f_mask.write(np.ascontiguousarray(item["mask"].numpy(), dtype=np.uint8).tobytes())
                f_valid.write(np.ascontiguousarray(item["valid"].numpy(), dtype=np.uint8).tobytes())
                image = torch.stack([item["views"][v] for v in present]).numpy()  # [V, C, H, W]
                channels = int(image.shape[1])
                f_pix.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())
                chips.append({
                    "chip_id": item["chip_id"],
                    "event": item["event"],
                    "label_kind": item.get("label_kind", DEFAULT_LABEL_KIND),
                    "views": present,
                    "grid": list(block.shape[-2:]),
                    "offset": offset,
                    "pixel_offset": pixel_offset,
                    "image_offset": image_offset,
                })  # fmt: skip
                offset += block.size
                pixel_offset += int(item["mask"].numel())
                image_offset += int(image.size)
        index = {"key": key, "version": CACHE_VERSION, "dim": int(model.encoder_dim),
                 "patch": int(model.patch_size), "channels": channels, "dtype": "float32",
                 "chips": chips}  # fmt: skip
        (tmp / INDEX_FILE).write_text(json.dumps(index) + "\n")
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        encoder.to(original_device)
        model.waves = waves
        encoder.train(was_training)
        if getattr(model, "strategy", None) == "frozen":
            encoder.eval()
    return FeatureCache(directory)


def _chip_fingerprint(ref: Any) -> list[Any]:
    """Chip identity plus each file's size and mtime, so edited data never reads a stale cache."""
    files = []
    for role, path in sorted(ref.files.items()):
        try:
            st = os.stat(path)
            files.append([role, str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([role, str(path)])
    return [ref.format, ref.chip_id, files]


def prepare_feature_cache(
    config: RunConfig,
    model: Any,
    datamodule: Any,
    cache_root: str | Path,
    device: torch.device | str = "cpu",
    precision: str | None = None,
) -> CachedFeatureDataModule:
    """Build (or reuse) the train and val caches of a frozen run; return the DataModule serving them.

    `datamodule` is a set-up FloodDataModule: its splits, normalisation presets and speckle filter
    define the chips and the numbers, so they are part of the cache key.
    """
    from floodlora.data.datamodule import FloodDataset
    from floodlora.runs import base_fingerprint

    check_feature_cache_config(config)
    data = config.data
    base = {
        "base": base_fingerprint(config.model.checkpoint),
        "encoder": model.clay_encoder.config.to_dict(),
        "views": list(model.views),
        "bands": list(model.bands),
        "normalization": {fmt: p.to_dict() for fmt, p in sorted(datamodule.presets.items())},
        "speckle_filter": datamodule.speckle_filter,
        "min_size": data.crop_size,
        "precision": precision or "32-true",  # bf16 features differ from fp32 ones
    }
    t0 = time.perf_counter()
    caches: dict[str, FeatureCache | None] = {}
    for split in ("train", "val"):
        refs = datamodule.splits.get(split) or []
        if not refs:
            caches[split] = None
            continue
        key = cache_key({**base, "split": split, "chips": [_chip_fingerprint(r) for r in refs]})
        ds = FloodDataset(refs, datamodule.presets, data.views, data.bands, crop_size=None, train=False,
                          seed=data.seed, speckle_filter=datamodule.speckle_filter)  # fmt: skip
        caches[split] = build_feature_cache(
            model, ds, Path(cache_root) / f"{split}-{key[:16]}", key, data.crop_size, device, precision
        )
    if caches["train"] is None:
        raise DataError(f"{', '.join(data.roots)}: the train split is empty")
    dm = CachedFeatureDataModule(
        caches["train"],
        caches["val"],
        data.crop_size,
        data.batch_size,
        data.augment,
        data.seed,
        data.num_workers,
        batch_sampler=datamodule.train_batch_sampler(),
    )
    dm.build_seconds = time.perf_counter() - t0
    return dm
