"""Serving a frozen-encoder feature cache: the on-disk reader, the Dataset and the DataModule.

The cache is built by floodlora.training.feature_cache (it runs the encoder); this module only reads
it. Layout, one directory per split and cache key: ``features.f32`` (raw float32, chip after chip,
[V_i, D, h_i, w_i]), ``pixels.f32`` (the normalised input views, [V_i, C, H_i, W_i]), ``mask.u8`` and
``valid.u8`` (chip after chip, [H_i, W_i]) and ``index.json`` (shapes, offsets, chip ids), written
last as the completeness marker.

Token (i, j) covers pixels [p*i, p*i+p) x [p*j, p*j+p), so rot90 and flips of the pixel grid are
exactly rot90 and flips of the token grid: training applies the same transform to the token grids
[D, h, w], the input pixels and the mask / valid map, and random crops are aligned to the token grid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from floodlora.config import DEFAULT_LABEL_KIND
from floodlora.data.datamodule import WorkerRng, augment_array
from floodlora.data.sample import MASK_NODATA
from floodlora.errors import ConfigError, DataError

CACHE_VERSION = 3  # 3: chips record their label kind
INDEX_FILE = "index.json"
FEATURES_FILE = "features.f32"
MASK_FILE = "mask.u8"
VALID_FILE = "valid.u8"
PIXELS_FILE = "pixels.f32"  # the normalised input views, for decoders with a pixel path


@dataclass(frozen=True)
class CachedChip:
    """One chip's cached token grids (view -> [D, h, w]), input pixels (view -> [C, H, W]), mask, valid."""

    chip_id: str
    event: str
    features: dict[str, np.ndarray]
    mask: np.ndarray
    valid: np.ndarray
    pixels: dict[str, np.ndarray]
    label_kind: str = DEFAULT_LABEL_KIND  # what the mask marks (floodlora.config.LABEL_KINDS)


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
            label_kind=meta.get("label_kind", DEFAULT_LABEL_KIND),
        )

    @property
    def nbytes(self) -> int:
        files = (FEATURES_FILE, MASK_FILE, VALID_FILE, PIXELS_FILE)
        return sum((self.directory / f).stat().st_size for f in files)


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
            "label_kind": chip.label_kind,
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
        "label_kind": [it.get("label_kind", DEFAULT_LABEL_KIND) for it in items],
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
