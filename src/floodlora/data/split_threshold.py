"""Label-free water maps by split-based thresholding: the teacher of self-adaptation, and a baseline.

Operational SAR flood services (Copernicus GFM, ASF HydroSAR, AutoFloods) map water without labels.
A whole scene's histogram is seldom bimodal, since water is a small share of it, but tiles that
straddle a shore are. So the images of one scene (or the chips of one event) are cut into tiles.
The tiles whose histogram is clearly bimodal are kept, and one threshold per band is fitted on the
pooled pixels of the kept tiles.

A tile is kept for a band (on values where low means water: dB, or scaled 8-bit) when:

* Ashman's D of its two Otsu classes is at least ``min_ashman_d``, i.e. the class means are further
  apart than the classes' spread;
* each class holds at least ``min_class_share`` of the tile's valid pixels;
* on calibrated data (dB), the dark class's mean lies below ``max_water_db`` for the band. Open water
  backscatters little; a tile of fields next to forest can be bimodal too.

Each band then scores every pixel by its distance below the band's threshold, in units of half
the gap between the pooled class means. A score of +1 means as dark as the typical water pixel,
-1 as bright as the typical dry one; the bands' scores are averaged. Water is score > 0.

With a pre-event view, flood means new water: water after the event that was not water before, with
the same thresholds (:attr:`SplitResult.kind` is then ``flood``). Pseudo-labels keep only the
confident pixels (|score| >= ``confident``, eroded by ``erode`` px so that shores and speckle stay
unlabelled, 255). Where no tile is bimodal the scene maps dry, and the result says so: a dry
scene is not an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from floodlora.data.sample import MASK_DRY, MASK_FLOOD, MASK_NODATA, Sample
from floodlora.errors import ConfigError, DataError

#: dB levels below which a bimodal tile's dark class may be open water (calibrated data only).
#: At -14 / -20 a synthesised dry scene of two kinds of fields (-7 and -12 dB VV) had 38 % flagged;
#: from -16 / -22 none, with the same F1 on the real dB chips (docs/quality.md).
MAX_WATER_DB = {"vv": -16.0, "vh": -22.0}
MAX_POOLED_PIXELS = 4_000_000  # pooled kept-tile pixels per band (an evenly spaced subset beyond)


class DrySceneError(DataError):
    """No tile is bimodal: the scene maps dry, and a self-adapting model has nothing to learn from."""


@dataclass(frozen=True)
class SplitOptions:
    """The teacher's settings. Defaults follow the operational split-based thresholding practice."""

    tile: int = 64  # tile side in px (chips of 256 px give 16 tiles)
    #: bimodality. An Otsu split of one Gaussian already gives D = 2.7, so the textbook 2 keeps
    #: every speckled tile of 8-bit chips; 3 keeps shores (measured on the real chips: docs/quality.md)
    min_ashman_d: float = 3.0
    min_class_share: float = 0.1  # each Otsu class at least this share of the tile's valid pixels
    min_valid: float = 0.9  # a tile counts only with this share of valid pixels
    confident: float = 0.5  # |score| from which a pixel becomes a pseudo-label
    erode: int = 1  # px of erosion of each confident class (shores and speckle stay unlabelled)
    use_pre: bool = True  # with a pre-event view, map new water (flood) rather than all water
    #: an image (a chip, or a scene) with this many bimodal tiles gets its own thresholds; others take
    #: the pooled ones (0: pooled only). Chips of one folder may come from differently scaled scenes.
    local_min_tiles: int = 0

    def __post_init__(self) -> None:
        if self.tile < 8:
            raise ConfigError(f"split threshold: tile must be >= 8 px, got {self.tile}")
        if not (math.isfinite(self.min_ashman_d) and self.min_ashman_d > 0):
            raise ConfigError(f"split threshold: min Ashman D must be > 0, got {self.min_ashman_d}")
        if not 0.0 < self.min_class_share < 0.5:
            raise ConfigError(
                f"split threshold: min class share must be in (0, 0.5), got {self.min_class_share}"
            )
        if not 0.0 < self.min_valid <= 1.0:
            raise ConfigError(f"split threshold: min valid must be in (0, 1], got {self.min_valid}")
        if not (math.isfinite(self.confident) and self.confident >= 0):
            raise ConfigError(f"split threshold: confident must be >= 0, got {self.confident}")
        if self.local_min_tiles < 0:
            raise ConfigError(f"split threshold: local min tiles must be >= 0, got {self.local_min_tiles}")
        if self.erode < 0:
            raise ConfigError(f"split threshold: erode must be >= 0, got {self.erode}")


@dataclass
class BandFit:
    """One band's pooled fit: the threshold and the class means of the kept tiles' pixels."""

    threshold: float
    water_mean: float
    dry_mean: float
    tiles_kept: int
    tiles_total: int


@dataclass
class SplitResult:
    """Per image: the score, the hard map and the pseudo-labels; and what the fit kept."""

    kind: str  # flood (new water: a pre view was used) | water
    bands: dict[str, BandFit]  # the bands with at least one kept tile
    tiles_total: int
    score: list[np.ndarray]  # float32, NaN where invalid
    water: list[np.ndarray]  # uint8: 1 water (or new water), 0 dry, 255 invalid
    pseudo: list[np.ndarray]  # uint8: 1 / 0 where confident, 255 unsure or invalid
    messages: list[str] = field(default_factory=list)
    pre_bands: dict[str, BandFit] = field(default_factory=dict)  # the pre view's own fits (flood kind)
    images_with_own_fit: int = 0  # images with enough bimodal tiles for their own thresholds
    pre_images_with_own_fit: int = 0

    @property
    def found_water(self) -> bool:
        return bool(self.bands)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts: thresholds, kept tiles, pseudo-label shares."""
        valid = sum(int((w != MASK_NODATA).sum()) for w in self.water)
        labelled = sum(int((p != MASK_NODATA).sum()) for p in self.pseudo)
        wet = sum(int((p == MASK_FLOOD).sum()) for p in self.pseudo)
        mapped = sum(int((w == MASK_FLOOD).sum()) for w in self.water)
        return {
            "kind": self.kind,
            "bands": {b: asdict(f) for b, f in self.bands.items()},
            "pre_bands": {b: asdict(f) for b, f in self.pre_bands.items()},
            "tiles_total": self.tiles_total,
            "images": len(self.water),
            "images_with_own_fit": self.images_with_own_fit,
            "pre_images_with_own_fit": self.pre_images_with_own_fit,
            "mapped_fraction": mapped / max(valid, 1),
            "pseudo_labelled_fraction": labelled / max(valid, 1),
            "pseudo_water_fraction": wet / max(labelled, 1),
            "messages": list(self.messages),
        }


def ashman_d(low: np.ndarray, high: np.ndarray) -> float:
    """Ashman's D of two classes: sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) (> 2: clearly separated)."""
    spread = math.sqrt(float(low.var()) + float(high.var()))
    return math.sqrt(2.0) * abs(float(high.mean()) - float(low.mean())) / max(spread, 1e-9)


def _band_values(sample: Sample, view: str, band: str) -> np.ndarray | None:
    """`band` of `view` in units where low means water (linear power is taken to dB), NaN where invalid."""
    bands = sample.views.get(view)
    if bands is None or band not in bands:
        return None
    arr = bands[band]
    if sample.meta.units == "linear":
        from floodlora.data.sar import to_db

        arr = to_db(arr)
    return np.where(sample.valid, arr, np.nan).astype(np.float32)


def _view_named(sample: Sample, when: str) -> str | None:
    for name in (when, f"{when}_asc", f"{when}_desc"):
        if name in sample.views:
            return name
    return None


def tile_stats(
    values: np.ndarray, opts: SplitOptions, max_water: float | None
) -> tuple[list[np.ndarray], int]:
    """The pixels of the bimodal tiles of one image, and how many tiles were examined."""
    from skimage.filters import threshold_otsu

    h, w = values.shape
    t = opts.tile
    kept: list[np.ndarray] = []
    total = 0
    for r in range(0, max(h - t, 0) + 1, t):
        for c in range(0, max(w - t, 0) + 1, t):
            tile = values[r : r + t, c : c + t]
            v = tile[np.isfinite(tile)]
            total += 1
            if v.size < opts.min_valid * tile.size or v.size < 16 or float(v.max()) <= float(v.min()):
                continue
            th = float(threshold_otsu(v))
            low, high = v[v <= th], v[v > th]
            share = low.size / v.size
            if not opts.min_class_share <= share <= 1.0 - opts.min_class_share:
                continue
            if max_water is not None and float(low.mean()) > max_water:
                continue
            if ashman_d(low, high) >= opts.min_ashman_d:
                kept.append(v)
    return kept, total


def _fit_pixels(pooled: list[np.ndarray], tiles_total: int) -> BandFit | None:
    """Otsu threshold and class means of the pooled pixels of bimodal tiles (None: no tile)."""
    from skimage.filters import threshold_otsu

    if not pooled:
        return None
    v = np.concatenate(pooled)
    if v.size > MAX_POOLED_PIXELS:
        v = v[:: math.ceil(v.size / MAX_POOLED_PIXELS)]
    th = float(threshold_otsu(v))
    low, high = v[v <= th], v[v > th]
    return BandFit(th, float(low.mean()), float(high.mean()), len(pooled), tiles_total)


def fit_band(
    images: Sequence[np.ndarray | None], opts: SplitOptions, max_water: float | None
) -> tuple[BandFit | None, list[BandFit | None]]:
    """The pooled fit over the bimodal tiles of every image, and each image's own fit where it has
    at least ``opts.local_min_tiles`` bimodal tiles (else None: it takes the pooled one)."""
    kept_per: list[list[np.ndarray]] = []
    totals: list[int] = []
    for img in images:
        kept, n = tile_stats(img, opts, max_water) if img is not None else ([], 0)
        kept_per.append(kept)
        totals.append(n)
    pooled = _fit_pixels([v for kept in kept_per for v in kept], sum(totals))
    local = [
        _fit_pixels(kept, n) if opts.local_min_tiles and len(kept) >= opts.local_min_tiles else None
        for kept, n in zip(kept_per, totals, strict=True)
    ]
    return pooled, local


def band_score(values: np.ndarray, fit: BandFit) -> np.ndarray:
    """+1 at the typical water level, 0 at the threshold, -1 at the typical dry level (about)."""
    half_gap = max((fit.dry_mean - fit.water_mean) / 2.0, 1e-6)
    return ((fit.threshold - values) / half_gap).astype(np.float32)


def _confident(score: np.ndarray, level: float, erode: int) -> np.ndarray:
    """uint8 pseudo-labels: 1 / 0 where |score| >= level (each class eroded by `erode` px), else 255."""
    from scipy.ndimage import binary_erosion

    out = np.full(score.shape, MASK_NODATA, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        wet, dry = score >= level, score <= -level
    if erode:
        structure = np.ones((2 * erode + 1, 2 * erode + 1), dtype=bool)
        wet = binary_erosion(wet, structure, border_value=1)
        dry = binary_erosion(dry, structure, border_value=1)
    out[dry] = MASK_DRY
    out[wet] = MASK_FLOOD
    return out


def split_threshold(
    samples: Sequence[Sample],
    options: SplitOptions | None = None,
    exclude: Sequence[np.ndarray | None] | None = None,
) -> SplitResult:
    """Map water (or new water, with a pre view) on `samples`, which are one scene's images or one
    event's chips, without labels. Any mask on the samples is ignored.

    `exclude` (per sample, True where the ground cannot hold floodwater: steep, high above drainage)
    is never water and never a pseudo-label.
    """
    opts = options or SplitOptions()
    if not samples:
        raise DataError("split threshold: no images given")
    units = {s.meta.units for s in samples}
    if len(units) > 1:
        raise DataError(
            f"split threshold: images in several units ({', '.join(sorted(units))}); fit each apart"
        )
    calibrated = units != {"scaled-uint8"}
    posts = [_view_named(s, "post") for s in samples]
    if any(p is None for p in posts):
        bad = next(s for s, p in zip(samples, posts, strict=True) if p is None)
        raise DataError(f"{bad.meta.chip_id}: no post-event view (it has {', '.join(bad.views)})")
    post = _view_fits(samples, posts, opts, calibrated)
    if not post.values:
        raise DataError("split threshold: the images have no vv or vh band")
    pres = [_view_named(s, "pre") if opts.use_pre else None for s in samples]
    kind = "flood" if any(p is not None for p in pres) else "water"
    # the pre view gets its own thresholds: 8-bit sources scale each date differently
    pre = _view_fits(samples, pres, opts, calibrated) if kind == "flood" and post.pooled else None
    messages: list[str] = []
    if not post.pooled:
        messages.append(
            f"no bimodal tile in {post.tiles_total} tiles of {opts.tile} px: no water mapped "
            "(the scene looks dry)"
        )
    scores, waters, pseudos = [], [], []
    for i, s in enumerate(samples):
        score = post.score(i)
        if pre is not None and pres[i] is not None:
            # new water: water now and dry before; the weaker of the two decides the confidence
            score = np.minimum(score, -pre.score(i))
        ex = exclude[i] if exclude is not None else None
        if ex is not None:
            score = np.where(ex, np.nan, score)
        invalid = ~s.valid | np.isnan(score)
        water = np.where(invalid, MASK_NODATA, score > 0).astype(np.uint8)
        if ex is not None:
            water[ex & s.valid] = MASK_DRY  # excluded ground is mapped dry, never water
        if post.pooled:
            pseudo = _confident(np.where(invalid, np.nan, score), opts.confident, opts.erode)
        else:  # a dry scene: every valid pixel is confidently dry
            pseudo = np.where(invalid, MASK_NODATA, MASK_DRY).astype(np.uint8)
        scores.append(np.where(invalid, np.nan, score).astype(np.float32))
        waters.append(water)
        pseudos.append(pseudo)
    return SplitResult(
        kind, post.pooled, post.tiles_total, scores, waters, pseudos, messages,
        pre.pooled if pre is not None else {}, post.n_local(), pre.n_local() if pre is not None else 0,
    )  # fmt: skip


@dataclass
class _ViewFits:
    """One view's band values per image, the pooled fits and each image's own fits."""

    values: dict[str, list[np.ndarray | None]]
    pooled: dict[str, BandFit]
    local: dict[str, list[BandFit | None]]
    tiles_total: int

    def n_local(self) -> int:
        return max((sum(f is not None for f in fits) for fits in self.local.values()), default=0)

    def score(self, i: int) -> np.ndarray:
        """Mean over the fitted bands of image `i`'s band scores; -inf (dry) with no fit."""
        parts = []
        for band, pooled in self.pooled.items():
            values = self.values[band][i]
            if values is not None:
                parts.append(band_score(values, self.local[band][i] or pooled))
        if not parts:
            shape = next(v[i].shape for v in self.values.values() if v[i] is not None)
            return np.full(shape, -np.inf, dtype=np.float32)
        return np.mean(parts, axis=0).astype(np.float32)


def _view_fits(
    samples: Sequence[Sample], views: Sequence[str | None], opts: SplitOptions, calibrated: bool
) -> _ViewFits:
    values: dict[str, list[np.ndarray | None]] = {}
    pooled: dict[str, BandFit] = {}
    local: dict[str, list[BandFit | None]] = {}
    total = 0
    for band in ("vv", "vh"):
        per = [
            _band_values(s, v, band) if v is not None else None for s, v in zip(samples, views, strict=True)
        ]
        if all(v is None for v in per):
            continue
        values[band] = per
        fit, own = fit_band(per, opts, MAX_WATER_DB[band] if calibrated else None)
        total = max(total, sum(_n_tiles(v.shape, opts.tile) for v in per if v is not None))
        if fit is not None:
            pooled[band], local[band] = fit, own
    return _ViewFits(values, pooled, local, total)


def _n_tiles(shape: tuple[int, ...], tile: int) -> int:
    return max(shape[0] // tile, 1) * max(shape[1] // tile, 1)
