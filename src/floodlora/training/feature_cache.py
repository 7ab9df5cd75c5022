"""Frozen-encoder feature cache: encode every chip once, then train only the decoder.

Why. With the frozen strategy the encoder is a fixed function, yet a plain training loop runs it on
every chip in every epoch; at 512 px with four views that is nearly the whole step. The cache runs
it once per chip (eval mode, no grad) on the un-augmented chip, keeps the token grids on disk in one
memory-mapped file, and serves them with the masks; training then calls ``model.decode`` only.

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
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from floodlora.config import RunConfig
from floodlora.data.datamodule import WorkerRng, augment_array
from floodlora.data.sample import MASK_NODATA, centre_window
from floodlora.errors import ConfigError, DataError
from floodlora.models.strategies import REGISTRY, strategy_class

CACHE_VERSION = 2
INDEX_FILE = "index.json"
FEATURES_FILE = "features.f32"
MASK_FILE = "mask.u8"
VALID_FILE = "valid.u8"
PIXELS_FILE = "pixels.f32"  # the normalised input views, for decoders with a pixel path


def check_feature_cache_config(config: RunConfig) -> None:
    """Fail early, in one line, when `train.feature_cache` cannot apply to this run."""
    if not config.train.feature_cache:
        return
    if not strategy_class(config.model.strategy).constant_encoder:
        constant = " | ".join(n for n, cls in REGISTRY.items() if cls.constant_encoder)
        raise ConfigError(
            f"train.feature_cache needs model.strategy: {constant} (a cached encoder output would go stale "
            f"while the encoder trains); got {config.model.strategy!r}"
        )
    if config.train.devices * config.train.num_nodes > 1:
        raise ConfigError("train.feature_cache runs in a single process; set train.devices: 1, num_nodes: 1")


# --------------------------------------------------------------------------------------------------
# Geometry shared by the cache builder and the cached dataset
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
# The cache on disk
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedChip:
    """One chip's cached token grids (view -> [D, h, w]), input pixels (view -> [C, H, W]), mask, valid."""

    chip_id: str
    event: str
    features: dict[str, np.ndarray]
    mask: np.ndarray
    valid: np.ndarray
    pixels: dict[str, np.ndarray]


class FeatureCache:
    """Read-only view of a built cache directory (memory-mapped: nothing is loaded up front)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise DataError(f"{self.directory}: not a complete feature cache ({INDEX_FILE} missing)")
        self.index: dict[str, Any] = json.loads(index_path.read_text())
        self.chips: list[dict[str, Any]] = self.index["chips"]
        self.dim = int(self.index["dim"])
        self.patch = int(self.index["patch"])
        self.key = str(self.index["key"])
        self.channels = int(self.index.get("channels", 0))
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.chips)

    def _maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Open the memmaps lazily, once per process (DataLoader workers re-open after fork)."""
        if self._arrays is None or self._pid != os.getpid():
            d = self.directory
            self._arrays = (
                np.memmap(d / FEATURES_FILE, dtype=np.float32, mode="r"),
                np.memmap(d / MASK_FILE, dtype=np.uint8, mode="r"),
                np.memmap(d / VALID_FILE, dtype=np.uint8, mode="r"),
                np.memmap(d / PIXELS_FILE, dtype=np.float32, mode="r"),
            )
            self._pid = os.getpid()
        return self._arrays

    def __getitem__(self, index: int) -> CachedChip:
        meta = self.chips[index]
        feats, masks, valids, pixels = self._maps()
        views: list[str] = meta["views"]
        gh, gw = meta["grid"]
        n = len(views) * self.dim * gh * gw
        block = feats[meta["offset"] : meta["offset"] + n].reshape(len(views), self.dim, gh, gw)
        h, w = gh * self.patch, gw * self.patch
        px = slice(meta["pixel_offset"], meta["pixel_offset"] + h * w)
        c = self.channels
        start = meta["image_offset"]
        image = pixels[start : start + len(views) * c * h * w].reshape(len(views), c, h, w)
        return CachedChip(
            chip_id=meta["chip_id"],
            event=meta["event"],
            features={v: block[i] for i, v in enumerate(views)},
            mask=masks[px].reshape(h, w),
            valid=valids[px].reshape(h, w).astype(bool),
            pixels={v: image[i] for i, v in enumerate(views)},
        )

    @property
    def nbytes(self) -> int:
        files = (FEATURES_FILE, MASK_FILE, VALID_FILE, PIXELS_FILE)
        return sum((self.directory / f).stat().st_size for f in files)


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


# --------------------------------------------------------------------------------------------------
# Serving the cache
# --------------------------------------------------------------------------------------------------


class CachedFeatureDataset(Dataset):
    """Items ``{"features": {view: [D, c/p, c/p]}, "views": {view: [C, c, c]}, "mask", "valid", ...}``.

    Training: a random token-aligned crop of `crop_size` px, then rot90 / flip applied identically to
    the token grids and the mask / valid map. Evaluation (`train=False`): the whole cached chip.
    """

    def __init__(
        self,
        cache: FeatureCache,
        crop_size: int | None = None,
        train: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        if crop_size is not None and (crop_size <= 0 or crop_size % cache.patch):
            raise ConfigError(f"crop size {crop_size} must be a positive multiple of the patch {cache.patch}")
        self.cache = cache
        self.crop_size = crop_size
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self._generator = WorkerRng(seed)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict[str, Any]:
        chip = self.cache[index]
        p = self.cache.patch
        feats, mask, valid, pixels = chip.features, chip.mask, chip.valid, chip.pixels
        rng = self._generator() if self.train else None
        gh, gw = mask.shape[0] // p, mask.shape[1] // p
        if self.crop_size is not None and self.crop_size // p < max(gh, gw):
            c = self.crop_size // p
            if rng is None:
                ty, tx = (gh - c) // 2, (gw - c) // 2
            else:
                ty, tx = int(rng.integers(0, gh - c + 1)), int(rng.integers(0, gw - c + 1))
            feats = {v: f[:, ty : ty + c, tx : tx + c] for v, f in feats.items()}
            mask = mask[ty * p : (ty + c) * p, tx * p : (tx + c) * p]
            pixels = {v: a[:, ty * p : (ty + c) * p, tx * p : (tx + c) * p] for v, a in pixels.items()}
            valid = valid[ty * p : (ty + c) * p, tx * p : (tx + c) * p]
        if self.augment and rng is not None:
            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            feats = {v: augment_array(f, k, flip) for v, f in feats.items()}
            mask, valid = augment_array(mask, k, flip), augment_array(valid, k, flip)
            pixels = {v: augment_array(a, k, flip) for v, a in pixels.items()}
        return {
            # copies: the cache is a read-only memory map
            "features": {v: torch.from_numpy(np.array(f, order="C")) for v, f in feats.items()},
            "views": {v: torch.from_numpy(np.array(a, order="C")) for v, a in pixels.items()},
            "mask": torch.from_numpy(np.array(mask, order="C")),
            "valid": torch.from_numpy(np.array(valid, order="C")),
            "chip_id": chip.chip_id,
            "event": chip.event,
        }


def collate_features(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack cached items; grids of different sizes are zero-padded (their pixels are nodata).

    Only views present in every item are kept, as the live collate does.
    """
    if not items:
        raise DataError("empty batch")
    h = max(int(it["mask"].shape[0]) for it in items)
    w = max(int(it["mask"].shape[1]) for it in items)
    common = [v for v in items[0]["features"] if all(v in it["features"] for it in items)]

    def pad(t: Tensor, th: int, tw: int, value: float | int) -> Tensor:
        dh, dw = th - t.shape[-2], tw - t.shape[-1]
        if dh == 0 and dw == 0:
            return t
        if t.dtype == torch.bool:
            return torch.nn.functional.pad(t.to(torch.uint8), (0, dw, 0, dh), value=int(value)).bool()
        return torch.nn.functional.pad(t, (0, dw, 0, dh), value=value)

    if not common:
        raise DataError(f"no view is present in every item of the batch {[it['chip_id'] for it in items]}")
    patch = int(items[0]["mask"].shape[0]) // int(items[0]["features"][common[0]].shape[-2])
    gh, gw = h // patch, w // patch
    return {
        "features": {v: torch.stack([pad(it["features"][v], gh, gw, 0.0) for it in items]) for v in common},
        "views": {v: torch.stack([pad(it["views"][v], h, w, 0.0) for it in items]) for v in common},
        "mask": torch.stack([pad(it["mask"], h, w, MASK_NODATA) for it in items]),
        "valid": torch.stack([pad(it["valid"], h, w, False) for it in items]),
        "chip_id": [it["chip_id"] for it in items],
        "event": [it["event"] for it in items],
    }


class CachedFeatureDataModule(L.LightningDataModule):
    """Train / val loaders over feature caches, batched and shuffled as the live DataModule is."""

    def __init__(
        self,
        train: FeatureCache,
        val: FeatureCache | None,
        crop_size: int,
        batch_size: int,
        augment: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        batch_sampler: Any = None,
    ) -> None:
        """`batch_sampler`: the live DataModule's flood/source-aware sampler (same chip order)."""
        super().__init__()
        self.batch_sampler = batch_sampler
        self.train_set = CachedFeatureDataset(train, crop_size, train=True, augment=augment, seed=seed)
        self.val_set = CachedFeatureDataset(val, None) if val is not None and len(val) else None
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.build_seconds = 0.0

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_features,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            persistent_workers=self.num_workers > 0,
        )

    def describe(self) -> dict[str, Any]:
        """What a run's accounting records about its cache."""
        caches = {"train": self.train_set.cache, "val": self.val_set.cache if self.val_set else None}
        return {
            "build_seconds": self.build_seconds,
            "chips": {k: len(c) if c else 0 for k, c in caches.items()},
            "bytes": sum(c.nbytes for c in caches.values() if c),
            "dirs": {k: str(c.directory) for k, c in caches.items() if c},
        }

    def train_dataloader(self) -> DataLoader:
        if self.batch_sampler is not None:
            return DataLoader(
                self.train_set, batch_sampler=self.batch_sampler, num_workers=self.num_workers,
                collate_fn=collate_features, persistent_workers=self.num_workers > 0,
            )  # fmt: skip
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []


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
