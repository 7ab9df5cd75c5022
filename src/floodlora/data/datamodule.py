"""DataModule: deterministic splits, normalisation per source, crops, augmentation and collation.

Batches follow docs/architecture.md: ``views`` (normalised [B, C, H, W] per view), ``mask`` uint8,
``valid`` bool, ``time`` and ``latlon`` [B, 4] in Clay's encoding, ``chip_id``, ``event`` and
``missing_bands``. Geometry augmentation (flip, rot90) is applied identically to every view, the mask
and the valid map. Randomness comes from one seeded generator per worker, so runs are repeatable.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from floodlora.config import DataConfig
from floodlora.data.sample import MASK_NODATA, VIEWS, Sample
from floodlora.data.sar import (
    NormalizationPreset,
    compute_stats,
    despeckle_sample,
    get_preset,
    normalize_sample,
)
from floodlora.data.sources import ChipRef, discover, read_sample
from floodlora.errors import ConfigError, DataError

STATS_MAX_CHIPS = 256  # chips per source used for `auto` statistics of scaled-uint8 data


def encode_time(date: str | None) -> np.ndarray:
    """Clay's time encoding [sin w, cos w, sin h, cos h]: w = ISO week·2π/52, h = hour·2π/24.

    The hour is 12 when only a date is known; zeros when the date is unknown.
    """
    if not date:
        return np.zeros(4, dtype=np.float32)
    try:
        when = dt.datetime.fromisoformat(str(date))
    except ValueError:
        return np.zeros(4, dtype=np.float32)
    has_time = "T" in str(date) or " " in str(date).strip()
    hour = when.hour + when.minute / 60.0 if has_time else 12.0
    w = when.isocalendar()[1] * 2 * math.pi / 52
    h = hour * 2 * math.pi / 24
    return np.array([math.sin(w), math.cos(w), math.sin(h), math.cos(h)], dtype=np.float32)


def encode_latlon(lat: float | None, lon: float | None) -> np.ndarray:
    """Clay's location encoding [sin lat, cos lat, sin lon, cos lon] in radians; zeros when unknown."""
    if lat is None or lon is None:
        return np.zeros(4, dtype=np.float32)
    la, lo = math.radians(lat), math.radians(lon)
    return np.array([math.sin(la), math.cos(la), math.sin(lo), math.cos(lo)], dtype=np.float32)


def _unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (independent of PYTHONHASHSEED and of the chip order)."""
    digest = hashlib.sha1(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _matches(event: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(event, p) for p in patterns)


def assign_splits(refs: Sequence[ChipRef], config: DataConfig) -> dict[str, list[ChipRef]]:
    """train/val/test/ood lists: holdout events -> ood; native splits kept; the rest by a hash of the chip id.

    A native train split still gives `val_fraction` of its chips to val (datasets such as OMBRIA have
    train/test only). Unlabelled chips are left out.
    """
    out: dict[str, list[ChipRef]] = {"train": [], "val": [], "test": [], "ood": []}
    val_f, test_f = config.val_fraction, config.test_fraction
    if val_f < 0 or test_f < 0 or val_f + test_f >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction must be in [0, 1), got {val_f} + {test_f}")
    for ref in refs:
        if not ref.labelled:
            continue
        if _matches(ref.event, config.holdout_events):
            out["ood"].append(ref)
            continue
        u = _unit_hash(config.seed, ref.format, ref.chip_id)
        if ref.split in ("val", "test"):
            out[ref.split].append(ref)
        elif ref.split == "train":
            out["val" if u < val_f else "train"].append(ref)
        else:
            out["test" if u < test_f else "val" if u < test_f + val_f else "train"].append(ref)
    if config.limit_train is not None and len(out["train"]) > config.limit_train:
        order = sorted(out["train"], key=lambda r: _unit_hash("limit", config.seed, r.format, r.chip_id))
        out["train"] = order[: config.limit_train]
    return out


def resolve_presets(
    normalization: str, refs: Sequence[ChipRef], train_refs: Sequence[ChipRef]
) -> dict[str, NormalizationPreset]:
    """One preset per source format. ``auto`` + scaled-uint8: statistics of that source's training chips."""
    presets: dict[str, NormalizationPreset] = {}
    for fmt in sorted({r.format for r in refs}):
        units = next(r.units for r in refs if r.format == fmt)
        stats = None
        if normalization == "auto" and units == "scaled-uint8":
            pool = [r for r in train_refs if r.format == fmt] or [r for r in refs if r.format == fmt]
            pool = sorted(pool, key=lambda r: _unit_hash("stats", r.chip_id))
            stats = compute_stats(pool, max_chips=STATS_MAX_CHIPS)
        presets[fmt] = get_preset(normalization, units, stats)
    return presets


def _crop_window(h: int, w: int, size: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner of a `size` crop: random when `rng` is given (training), else centred."""
    if rng is None:
        return max(0, (h - size) // 2), max(0, (w - size) // 2)
    return int(rng.integers(0, max(0, h - size) + 1)), int(rng.integers(0, max(0, w - size) + 1))


class WorkerRng:
    """A numpy generator per DataLoader worker: each worker gets a distinct seed every epoch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._owner: int | None = None

    def __call__(self) -> np.random.Generator:
        info = get_worker_info()
        if info is not None and self._owner != info.seed:
            self._rng = np.random.default_rng([self.seed, info.seed % 2**32])
            self._owner = info.seed
        return self._rng


class FloodDataset(Dataset):
    """Reads, normalises, crops and augments one chip per item (see module docstring for the dict).

    ``crop_size=None`` keeps the whole chip, cut down to a multiple of 8 around its centre.
    """

    def __init__(
        self,
        refs: Sequence[ChipRef],
        presets: dict[str, NormalizationPreset],
        views: Sequence[str] = ("pre", "post"),
        bands: Sequence[str] = ("vv", "vh"),
        crop_size: int | None = 128,
        train: bool = False,
        augment: bool = False,
        seed: int = 0,
        speckle_filter: str | None = None,
    ) -> None:
        if crop_size is not None and (crop_size <= 0 or crop_size % 8):
            raise ConfigError(f"data.crop_size must be a positive multiple of 8, got {crop_size}")
        unknown = [v for v in views if v not in VIEWS]
        if unknown:
            raise ConfigError(
                f"data.views: unknown view(s) {unknown}; expected names from {', '.join(VIEWS)}"
            )
        self.refs = list(refs)
        self.presets = presets
        self.views = list(views)
        self.bands = list(bands)
        self.crop_size = crop_size
        self.train = train
        self.augment = augment and train
        self.seed = seed
        self.speckle_filter = speckle_filter
        self._generator = WorkerRng(seed)

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, index: int) -> Sample:
        sample = read_sample(self.refs[index])
        if self.speckle_filter:
            sample = despeckle_sample(sample, self.speckle_filter)
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.refs[index]
        sample = self.load(index)
        normed = normalize_sample(sample, self.bands, self.presets[ref.format])
        arrays = {v: normed[v] for v in self.views if v in normed}
        if sample.mask is None:
            raise DataError(
                f"{ref.chip_id}: chip has no label; unlabelled chips cannot be used for training/eval"
            )
        mask = sample.mask.copy()
        valid = sample.valid.copy()
        h, w = mask.shape
        rng = self._generator() if self.train else None
        if self.crop_size is not None:
            size = self.crop_size
            if h < size or w < size:  # pad small chips: padding is nodata
                ph, pw = max(0, size - h), max(0, size - w)
                arrays = {v: np.pad(a, ((0, 0), (0, ph), (0, pw))) for v, a in arrays.items()}
                mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=MASK_NODATA)
                valid = np.pad(valid, ((0, ph), (0, pw)), constant_values=False)
                h, w = mask.shape
            th, tw = size, size
        else:
            th, tw = h // 8 * 8, w // 8 * 8
            if th == 0 or tw == 0:
                raise DataError(f"{ref.chip_id}: chip {h}x{w} is smaller than 8 px")
        if (th, tw) != (h, w):
            if self.crop_size is not None:
                y0, x0 = _crop_window(h, w, th, rng)
            else:
                y0, x0 = (h - th) // 2, (w - tw) // 2
            arrays = {v: a[:, y0 : y0 + th, x0 : x0 + tw] for v, a in arrays.items()}
            mask, valid = mask[y0 : y0 + th, x0 : x0 + tw], valid[y0 : y0 + th, x0 : x0 + tw]
        if self.augment and rng is not None:
            k = int(rng.integers(0, 4))
            flip = bool(rng.integers(0, 2))
            arrays = {v: augment_array(a, k, flip) for v, a in arrays.items()}
            mask, valid = augment_array(mask, k, flip), augment_array(valid, k, flip)
        missing = [b for b in self.bands if not any(b in bands for bands in sample.views.values())]
        return {
            "views": {
                v: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for v, a in arrays.items()
            },
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid)),
            "time": torch.from_numpy(encode_time(sample.meta.date)),
            "latlon": torch.from_numpy(encode_latlon(sample.meta.lat, sample.meta.lon)),
            "chip_id": ref.chip_id,
            "event": ref.event,
            "missing_bands": missing,
        }


def augment_array(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """rot90 by k quarter turns then an optional left-right flip, on the last two axes."""
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch; chips of different sizes are padded (nodata) to the largest.

    Only views present in every item are kept (the model treats an absent view as missing); views
    dropped that way are listed in ``dropped_views``.
    """
    if not items:
        raise DataError("empty batch")
    h = max(int(it["mask"].shape[0]) for it in items)
    w = max(int(it["mask"].shape[1]) for it in items)
    common = [v for v in items[0]["views"] if all(v in it["views"] for it in items)]
    every = {v for it in items for v in it["views"]}

    def pad(t: torch.Tensor, value: float | bool | int) -> torch.Tensor:
        dh, dw = h - t.shape[-2], w - t.shape[-1]
        if dh == 0 and dw == 0:
            return t
        if t.dtype == torch.bool:
            return torch.nn.functional.pad(t.to(torch.uint8), (0, dw, 0, dh), value=int(value)).bool()
        return torch.nn.functional.pad(t, (0, dw, 0, dh), value=value)

    return {
        "views": {v: torch.stack([pad(it["views"][v], 0.0) for it in items]) for v in common},
        "mask": torch.stack([pad(it["mask"], MASK_NODATA) for it in items]),
        "valid": torch.stack([pad(it["valid"], False) for it in items]),
        "time": torch.stack([it["time"] for it in items]),
        "latlon": torch.stack([it["latlon"] for it in items]),
        "chip_id": [it["chip_id"] for it in items],
        "event": [it["event"] for it in items],
        "missing_bands": [it["missing_bands"] for it in items],
        "dropped_views": sorted(every - set(common)),
    }


class FloodDataModule(L.LightningDataModule):
    """Discovers chips under ``config.roots``, splits them, and serves train/val/test/ood loaders."""

    def __init__(self, config: DataConfig, speckle_filter: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.speckle_filter = speckle_filter or config.speckle_filter
        self.splits: dict[str, list[ChipRef]] = {}
        self.presets: dict[str, NormalizationPreset] = {}
        self.skipped: dict[str, list[str]] = {}
        self._datasets: dict[str, FloodDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        cfg = self.config
        if cfg.crop_size <= 0 or cfg.crop_size % 8:
            raise ConfigError(f"data.crop_size must be a positive multiple of 8, got {cfg.crop_size}")
        refs = discover(cfg.roots, cfg.format)
        splits = assign_splits(refs, cfg)
        if not any(splits[s] for s in ("train", "val", "test", "ood")):
            raise DataError(f"{', '.join(cfg.roots)}: empty dataset, no labelled chips")
        labelled = [r for r in refs if r.labelled]
        self.presets = resolve_presets(cfg.normalization, labelled, splits["train"])
        for name in splits:
            splits[name], self.skipped[name] = self._filter_nodata(splits[name])
        self.splits = splits
        for name, chips in splits.items():
            train = name == "train"
            self._datasets[name] = FloodDataset(
                chips,
                self.presets,
                cfg.views,
                cfg.bands,
                crop_size=cfg.crop_size if train else None,
                train=train,
                augment=cfg.augment,
                seed=cfg.seed,
                speckle_filter=self.speckle_filter,
            )

    def _filter_nodata(self, refs: list[ChipRef]) -> tuple[list[ChipRef], list[str]]:
        """Drop chips whose unusable fraction exceeds ``max_nodata_fraction`` (read once at setup)."""
        if self.config.max_nodata_fraction >= 1.0:  # nothing to skip: spare the read of every chip
            return list(refs), []
        keep, skipped = [], []
        for ref in refs:
            s = read_sample(ref)
            (
                skipped.append(ref.chip_id)
                if s.nodata_fraction() > self.config.max_nodata_fraction
                else keep.append(ref)
            )
        return keep, skipped

    def dataset(self, split: str) -> FloodDataset:
        self.setup()
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        if len(ds) == 0:
            raise DataError(f"{', '.join(self.config.roots)}: the {split} split is empty")
        workers = self.config.num_workers
        return DataLoader(
            ds,
            batch_size=self.config.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.config.seed) if shuffle else None,
            persistent_workers=workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def ood_dataloader(self) -> DataLoader:
        """Chips of ``holdout_events`` (never used for training), for the unseen-event test."""
        return self._loader("ood", shuffle=False)

    def describe(self) -> dict[str, Any]:
        """Split sizes, skipped chips and the normalisation per source (a run records this)."""
        self.setup()
        return {
            "splits": {k: len(v) for k, v in self.splits.items()},
            "skipped_nodata": {k: len(v) for k, v in self.skipped.items()},
            "normalization": {fmt: p.to_dict() for fmt, p in self.presets.items()},
            "events": sorted({r.event for chips in self.splits.values() for r in chips}),
        }
