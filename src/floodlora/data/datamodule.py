"""DataModule: deterministic splits, normalisation per source, crops, augmentation and collation.

Batches follow docs/architecture.md: ``views`` (normalised [B, C, H, W] per view), ``mask`` uint8,
``valid`` bool, ``time`` and ``latlon`` [B, 4] in Clay's encoding, ``chip_id``, ``event`` and
``missing_bands``. Geometry augmentation (flip, rot90) is applied identically to every view, the mask
and the valid map. Randomness comes from one seeded generator per worker, so runs are repeatable.
"""

from __future__ import annotations

import fnmatch
import hashlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from floodlora.config import DEFAULT_LABEL_KIND, DataConfig
from floodlora.data.sample import MASK_NODATA, VIEWS, Sample, centre_window
from floodlora.data.sar import (
    PER_SCENE,
    PER_VIEW_8BIT,
    SCENE_MODES,
    SHIFT_ADVICE,
    NormalizationPreset,
    calibrated_run_preset,
    compute_stats,
    despeckle_sample,
    get_preset,
    normalize_sample,
    scene_preset,
)
from floodlora.data.sources import ChipRef, discover, read_sample
from floodlora.encodings import encode_latlon, encode_time
from floodlora.errors import ConfigError, DataError, size_text

PATCH = 8  # the encoder patch size: chips must hold at least one patch each way
STATS_MAX_CHIPS = 256  # chips per source used for `auto` statistics of scaled-uint8 data


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
    normalization: str,
    refs: Sequence[ChipRef],
    train_refs: Sequence[ChipRef],
    base: str = "clay-v1.5",
    fixed: Mapping[str, NormalizationPreset] | None = None,
    stats_from_data: bool = False,
    advice: str | None = SHIFT_ADVICE,
) -> dict[str, NormalizationPreset]:
    """One preset per source format (`advice` ends a domain-shift warning: calibrated_run_preset).

    * `fixed` (a trained run's presets) wins for every format it covers: a run is scored with the
      numbers it was trained with. Calibrated data of a format the run never saw takes the run's
      calibrated preset (or `base`).
    * ``auto`` + calibrated data: `base`, the encoder's pretraining preset.
    * ``auto`` + scaled-uint8: statistics of that source's training chips. A source with no training
      chips is an error unless `stats_from_data` allows statistics of the chips being scored.
    """
    presets: dict[str, NormalizationPreset] = {}
    fixed = dict(fixed or {})
    if normalization in SCENE_MODES:
        per_scene = [r for r in refs if normalization == PER_SCENE or r.units == "scaled-uint8"]
        presets = scene_presets(per_scene, fixed, per_view=normalization == PER_VIEW_8BIT)
        scene_formats = {r.format for r in per_scene}
        rest = [r for r in refs if r.format not in scene_formats]
        if rest:
            run_calibrated = {k: v for k, v in fixed.items() if not k.startswith("event:")}
            presets |= resolve_presets(
                "auto", rest, train_refs, base, run_calibrated, stats_from_data, advice
            )
        return presets
    for fmt in sorted({r.format for r in refs}):
        units = next(r.units for r in refs if r.format == fmt)
        if fmt in fixed:
            presets[fmt] = fixed[fmt]
            continue
        if fixed and units in ("db", "linear"):
            presets[fmt] = calibrated_run_preset(fixed, units, base, f"{fmt} chips", advice)
            continue
        stats = None
        if normalization == "auto" and units == "scaled-uint8":
            pool = [] if fixed else [r for r in train_refs if r.format == fmt]
            if not pool:
                if not stats_from_data:
                    raise ConfigError(
                        f"{fmt}: 8-bit rescaled chips of a source the run never trained on, so there are "
                        "no training statistics for them; pass --stats-from-data (data.stats_from_data) "
                        "to normalise them with statistics of these chips, or a stats YAML from "
                        "`floodlora stats`"
                    )
                warnings.warn(
                    f"{fmt}: no training chips of this source; normalising with statistics of the "
                    "chips being scored (data.stats_from_data)",
                    stacklevel=2,
                )
                pool = [r for r in refs if r.format == fmt]
            pool = sorted(pool, key=lambda r: _unit_hash("stats", r.chip_id))
            stats = compute_stats(pool, max_chips=STATS_MAX_CHIPS)
        presets[fmt] = get_preset(normalization, units, stats, base)
    return presets


def scene_key(ref: ChipRef) -> str:
    """The key of a chip's :data:`PER_SCENE` preset: its event (one scene, or one acquisition set)."""
    return f"event:{ref.event}"


def scene_presets(
    refs: Sequence[ChipRef], fixed: Mapping[str, NormalizationPreset] | None = None, per_view: bool = False
) -> dict[str, NormalizationPreset]:
    """One :data:`PER_SCENE` preset per event, from the event's own pixels (labels unused).

    A trained run's presets (`fixed`) are kept for the events it trained on, so that a run is scored
    with the numbers it was trained with; any other event is standardised with its own statistics.
    """
    fixed = dict(fixed or {})
    presets: dict[str, NormalizationPreset] = {}
    for key in sorted({scene_key(r) for r in refs}):
        if key in fixed:
            presets[key] = fixed[key]
            continue
        pool = sorted((r for r in refs if scene_key(r) == key), key=lambda r: _unit_hash("stats", r.chip_id))
        presets[key] = scene_preset((read_sample(r) for r in pool[:STATS_MAX_CHIPS]), key, per_view)
    return presets


def preset_for(presets: Mapping[str, NormalizationPreset], ref: ChipRef) -> NormalizationPreset:
    """A chip's preset: its scene's (per-scene normalisation) or its source format's."""
    return presets.get(scene_key(ref)) or presets[ref.format]


def sampling_weights(
    formats: Sequence[str], has_flood: Sequence[bool], flood_share: float, balance_sources: bool
) -> np.ndarray:
    """Per-chip draw probabilities for training (they sum to 1).

    Each source gets a share proportional to its chip count, or to its square root with
    `balance_sources`; inside a source, chips that hold flood get `flood_share` of it when the source
    has both kinds (0: no preference). Uniform when neither option is set.
    """
    formats = list(formats)
    flood = np.asarray(has_flood, dtype=bool)
    if not 0.0 <= flood_share < 1.0:
        raise ConfigError(f"data.flood_sampling must be in [0, 1), got {flood_share}")
    weights = np.zeros(len(formats), dtype=np.float64)
    for fmt in sorted(set(formats)):
        idx = np.array([i for i, f in enumerate(formats) if f == fmt])
        mass = float(np.sqrt(len(idx))) if balance_sources else float(len(idx))
        wet = flood[idx]
        if flood_share > 0 and wet.any() and (~wet).any():
            weights[idx[wet]] = mass * flood_share / wet.sum()
            weights[idx[~wet]] = mass * (1 - flood_share) / (~wet).sum()
        else:
            weights[idx] = mass / len(idx)
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(formats), 1.0 / max(1, len(formats)))


class GroupedBatchSampler(Sampler[list[int]]):
    """Weighted draws with replacement, batched so that a batch never mixes view sets.

    A batch of OMBRIA (pre + post) and ETCI (post only) chips would otherwise lose its pre view for
    every item (the collate keeps only views present in all items). Each epoch draws `num_samples`
    chips by `weights`, groups them by their view signature and cuts the groups into batches, in a
    shuffled order; seeded per epoch, so runs repeat.
    """

    def __init__(
        self, weights: np.ndarray, groups: Sequence[str], batch_size: int, num_samples: int, seed: int = 0
    ) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.groups = list(groups)
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self._drawn: tuple[int, list[list[int]]] | None = None

    def _batches(self) -> list[list[int]]:
        """This epoch's batches, drawn once (len() and iteration see the same ones)."""
        if self._drawn is not None and self._drawn[0] == self.epoch:
            return self._drawn[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist()
        by_group: dict[str, list[int]] = {}
        for i in draws:
            by_group.setdefault(self.groups[i], []).append(i)
        batches = [
            members[k : k + self.batch_size]
            for members in by_group.values()
            for k in range(0, len(members), self.batch_size)
        ]
        order = torch.randperm(len(batches), generator=g).tolist()
        self._drawn = (self.epoch, [batches[i] for i in order])
        return self._drawn[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


def check_crop_size(size: int, name: str = "data.crop_size") -> None:
    """Crops must tile into whole encoder patches: one rule for every setting that picks a crop."""
    if size <= 0 or size % PATCH:
        raise ConfigError(f"{name} must be a positive multiple of {PATCH}, got {size}")


def _crop_window(h: int, w: int, size: int, rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner of a `size` crop: random when `rng` is given (training), else centred."""
    if rng is None:
        rows, cols = centre_window(h, w, min(h, size), min(w, size))
        return rows.start, cols.start
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
        intensity_jitter: float = 0.0,
        cache_chips: bool = False,
        no_change_pairs: float = 0.0,
    ) -> None:
        if crop_size is not None:
            check_crop_size(crop_size)
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
        if intensity_jitter < 0:
            raise ConfigError(f"data.intensity_jitter must be >= 0, got {intensity_jitter}")
        self.intensity_jitter = intensity_jitter if train else 0.0
        if not 0 <= no_change_pairs <= 1:
            raise ConfigError(f"data.no_change_pairs must be in [0, 1], got {no_change_pairs}")
        self.no_change_pairs = no_change_pairs if train else 0.0
        self.cache_chips = cache_chips
        self._cache: dict[int, Sample] = {}
        self._generator = WorkerRng(seed)

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, index: int) -> Sample:
        """The chip's sample (speckle-filtered when asked); kept in memory with `cache_chips`."""
        if index in self._cache:
            return self._cache[index]
        sample = read_sample(self.refs[index])
        if self.speckle_filter:
            sample = despeckle_sample(sample, self.speckle_filter)
        if self.cache_chips:
            self._cache[index] = sample
        return sample

    def _jitter(
        self, arrays: dict[str, np.ndarray], valid: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """One random offset and gain per band, shared by the views (a calibration change)."""
        a = self.intensity_jitter
        n = len(self.bands)
        offset = rng.uniform(-a, a, size=(n, 1, 1)).astype(np.float32)
        gain = rng.uniform(1 - a / 2, 1 + a / 2, size=(n, 1, 1)).astype(np.float32)
        return {v: np.where(valid[None], x * gain + offset, x) for v, x in arrays.items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.refs[index]
        sample = self.load(index)
        normed = normalize_sample(sample, self.bands, preset_for(self.presets, ref))
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
            th, tw = h // PATCH * PATCH, w // PATCH * PATCH
            if th == 0 or tw == 0:
                raise DataError(f"{ref.chip_id}: chip {size_text(h, w)} is smaller than one {PATCH} px patch")
        if (th, tw) != (h, w):
            if self.crop_size is not None:
                y0, x0 = _crop_window(h, w, th, rng)
            else:
                y0, x0 = (s.start for s in centre_window(h, w, th, tw))
            arrays = {v: a[:, y0 : y0 + th, x0 : x0 + tw] for v, a in arrays.items()}
            mask, valid = mask[y0 : y0 + th, x0 : x0 + tw], valid[y0 : y0 + th, x0 : x0 + tw]
        if th != tw:  # evaluation of a non-square chip: Clay needs a square; pad with nodata (not scored)
            side = max(th, tw)
            ph, pw = side - th, side - tw
            arrays = {v: np.pad(a, ((0, 0), (0, ph), (0, pw))) for v, a in arrays.items()}
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=MASK_NODATA)
            valid = np.pad(valid, ((0, ph), (0, pw)), constant_values=False)
        if (
            self.no_change_pairs > 0
            and rng is not None
            and ref.label_kind == "flood"
            and {"pre", "post"} <= arrays.keys()
            and rng.random() < self.no_change_pairs
        ):
            arrays = {**arrays, "post": arrays["pre"].copy()}
            mask = np.where(mask == MASK_NODATA, MASK_NODATA, 0).astype(mask.dtype)
        if self.intensity_jitter > 0 and rng is not None:
            arrays = self._jitter(arrays, valid, rng)
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
            # each view its own acquisition date (a pre-event view without one: zeros)
            "time": {v: torch.from_numpy(encode_time(sample.meta.view_date(v))) for v in arrays},
            "latlon": torch.from_numpy(encode_latlon(sample.meta.lat, sample.meta.lon)),
            "chip_id": ref.chip_id,
            "chip_key": ref.key,
            "event": ref.event,
            "label_kind": ref.label_kind,
            "missing_bands": missing,
        }


def check_chip_size(ref: ChipRef, sample: Sample) -> None:
    """Refuse chips smaller than one encoder patch when the data is set up, not after an epoch."""
    h, w = sample.shape
    if h < PATCH or w < PATCH:
        first = next(iter(ref.files.values()), ref.chip_id)
        raise DataError(
            f"{first}: chip {size_text(h, w)} is smaller than one {PATCH} px encoder patch; "
            "drop it or use larger chips"
        )


def augment_array(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """rot90 by k quarter turns then an optional left-right flip, on the last two axes.

    The feature cache applies the same function to token grids, so token (i, j) stays over the
    pixels it encodes.
    """
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
        "time": (
            {v: torch.stack([it["time"][v] for it in items]) for v in common}
            if isinstance(items[0]["time"], Mapping)
            else torch.stack([it["time"] for it in items])
        ),
        "latlon": torch.stack([it["latlon"] for it in items]),
        "chip_id": [it["chip_id"] for it in items],
        "chip_key": [it.get("chip_key", it["chip_id"]) for it in items],
        "event": [it["event"] for it in items],
        "label_kind": [it.get("label_kind", DEFAULT_LABEL_KIND) for it in items],
        "missing_bands": [it["missing_bands"] for it in items],
        "dropped_views": sorted(every - set(common)),
    }


class FloodDataModule(L.LightningDataModule):
    """Discovers chips under ``config.roots``, splits them, and serves train/val/test/ood loaders."""

    #: how a domain-shift warning ends (what to do about it)
    shift_advice: str | None = SHIFT_ADVICE

    def __init__(
        self,
        config: DataConfig,
        speckle_filter: str | None = None,
        base_normalization: str = "clay-v1.5",
        presets: Mapping[str, NormalizationPreset] | None = None,
    ) -> None:
        """`base_normalization`: the encoder's pretraining preset (``auto`` for calibrated data);
        `presets`: a trained run's per-source presets, used as they are (evaluation)."""
        super().__init__()
        self.config = config
        self.speckle_filter = speckle_filter or config.speckle_filter
        self.base_normalization = base_normalization
        self.fixed_presets = dict(presets or {})
        self.splits: dict[str, list[ChipRef]] = {}
        self.presets: dict[str, NormalizationPreset] = {}
        self.skipped: dict[str, list[str]] = {}
        self.chip_info: dict[tuple[str, str], tuple[bool, str]] = {}  # (format, id) -> (has flood, views)
        self._datasets: dict[str, FloodDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        cfg = self.config
        check_crop_size(cfg.crop_size)
        refs = discover(cfg.roots, cfg.format)
        splits = self.assign_splits(refs)
        if not any(splits[s] for s in ("train", "val", "test", "ood")):
            raise DataError(f"{', '.join(cfg.roots)}: empty dataset, no labelled chips")
        labelled = [r for r in refs if r.labelled]
        self.presets = resolve_presets(
            cfg.normalization, labelled, splits["train"], self.base_normalization,
            self.fixed_presets, cfg.stats_from_data, self.shift_advice,
        )  # fmt: skip
        for name in splits:
            splits[name], self.skipped[name] = self._filter_nodata(splits[name])
        self.splits = splits
        for name, chips in splits.items():
            train = name == "train"
            self._datasets[name] = self._new_dataset(chips, train, cache_chips=cfg.cache_chips)

    def _new_dataset(self, chips: list[ChipRef], train: bool, cache_chips: bool) -> FloodDataset:
        """Training crops (augmented) with `train`, else whole chips as evaluation reads them."""
        cfg = self.config
        return FloodDataset(
            chips,
            self.presets,
            cfg.views,
            cfg.bands,
            crop_size=cfg.crop_size if train else None,
            train=train,
            augment=cfg.augment,
            seed=cfg.seed,
            speckle_filter=self.speckle_filter,
            intensity_jitter=cfg.intensity_jitter,
            cache_chips=cache_chips,
            no_change_pairs=cfg.no_change_pairs,
        )

    def assign_splits(self, refs: list[ChipRef]) -> dict[str, list[ChipRef]]:
        """train/val/test/ood lists of the discovered chips; a subclass may choose them otherwise."""
        return assign_splits(refs, self.config)

    def _needs_chip_info(self) -> bool:
        cfg = self.config
        return cfg.flood_sampling > 0 or cfg.balance_sources

    def _filter_nodata(self, refs: list[ChipRef]) -> tuple[list[ChipRef], list[str]]:
        """Drop chips whose unusable fraction exceeds ``max_nodata_fraction`` (read once at setup).

        The same read records, per chip, whether it holds flood and which views it has (for the
        training sampler).
        """
        if self.config.max_nodata_fraction >= 1.0 and not self._needs_chip_info():
            for ref in {r.format: r for r in reversed(refs)}.values():  # one chip per source
                check_chip_size(ref, read_sample(ref))
            return list(refs), []  # nothing to skip: spare the read of every chip
        keep, skipped = [], []
        for ref in refs:
            s = read_sample(ref)
            check_chip_size(ref, s)
            if s.nodata_fraction() > self.config.max_nodata_fraction:
                skipped.append(ref.chip_id)
                continue
            keep.append(ref)
            has_flood = s.mask is not None and bool((s.mask == 1).any())
            views = "+".join(v for v in self.config.views if v in s.views)
            self.chip_info[(ref.format, ref.chip_id)] = (has_flood, views)
        return keep, skipped

    def train_batch_sampler(self) -> GroupedBatchSampler | None:
        """Flood- and source-aware batches for training, or None for plain shuffling."""
        self.setup()
        cfg = self.config
        refs = self.splits["train"]
        if not self._needs_chip_info() or not refs:
            return None
        info = [self.chip_info[(r.format, r.chip_id)] for r in refs]
        weights = sampling_weights([r.format for r in refs], [i[0] for i in info], cfg.flood_sampling,
                                   cfg.balance_sources)  # fmt: skip
        return GroupedBatchSampler(weights, [i[1] for i in info], cfg.batch_size, len(refs), cfg.seed)

    def dataset(self, split: str) -> FloodDataset:
        self.setup()
        return self._datasets[split]

    def whole_chips(self, split: str) -> FloodDataset:
        """`split`'s chips whole, as evaluation reads them: no crop, flip, rotation or intensity jitter.

        Why: a rule over tile statistics (the context prior's quantiles) fitted on training crops
        meets whole chips at evaluation, whose statistics differ.
        """
        self.setup()
        return self._new_dataset(self.splits[split], train=False, cache_chips=False)  # read once

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        if len(ds) == 0:
            raise DataError(f"{', '.join(self.config.roots)}: the {split} split is empty")
        workers = self.config.num_workers
        batch_sampler = self.train_batch_sampler() if split == "train" else None
        if batch_sampler is not None:
            return DataLoader(
                ds, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                persistent_workers=workers > 0,
            )  # fmt: skip
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
