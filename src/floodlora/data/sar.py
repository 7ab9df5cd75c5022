"""SAR preprocessing: linear <-> dB, normalisation presets, per-dataset statistics, speckle filters.

Nodata is NaN throughout: conversions turn non-positive, non-finite and declared-nodata values into
NaN, a sample's ``valid`` map is False wherever any band is NaN, and normalisation writes 0 (the band
mean) there so that the network never sees a NaN. See docs/data.md for the ``auto`` rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from floodlora.data.sample import BANDS, Sample
from floodlora.errors import ConfigError, DataError

STATS_FORMAT = "floodlora-stats"


def to_db(x: ArrayLike, nodata: float | None = None) -> np.ndarray:
    """10·log10 of linear power as float32; values <= 0, NaN, inf and `nodata` become NaN (not -inf)."""
    a = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(a) & (a > 0)
    if nodata is not None and not np.isnan(nodata):
        ok &= a != nodata
    out = np.full(a.shape, np.nan, dtype=np.float64)
    np.log10(a, out=out, where=ok)
    out[ok] *= 10.0
    return out.astype(np.float32)


def to_linear(x: ArrayLike, nodata: float | None = None) -> np.ndarray:
    """10^(dB/10) as float32; NaN, +-inf and `nodata` become NaN (a real dB value is always finite)."""
    a = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(a)
    if nodata is not None and not np.isnan(nodata):
        ok &= a != nodata
    out = np.full(a.shape, np.nan, dtype=np.float64)
    np.power(10.0, a / 10.0, out=out, where=ok)
    return out.astype(np.float32)


def convert_units(arr: np.ndarray, src: str, dst: str, where: str = "data") -> np.ndarray:
    """Convert between ``db`` and ``linear``; ``scaled-uint8`` has an unknown scaling and cannot be."""
    if src == dst:
        return arr
    if src == "linear" and dst == "db":
        return to_db(arr)
    if src == "db" and dst == "linear":
        return to_linear(arr)
    raise ConfigError(
        f"{where}: cannot convert {src} values to {dst} (the 8-bit rescaling is unknown); "
        "use normalization: auto or a stats YAML computed on this source"
    )


# --------------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalizationPreset:
    """Per-band mean/std in a given unit system: x_norm = (convert(x, units) - mean) / std."""

    name: str
    units: str
    mean: dict[str, float]
    std: dict[str, float]
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "units": self.units, "mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "normalisation") -> NormalizationPreset:
        """Inverse of :meth:`to_dict` (how a run directory stores the presets it was trained with)."""
        try:
            return cls(
                str(data["name"]),
                str(data["units"]),
                {str(b): float(v) for b, v in data["mean"].items()},
                {str(b): float(v) for b, v in data["std"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"{where}: not a normalisation preset (bad or missing {err})") from None


# Clay v1.5 metadata.yaml, sentinel-1-rtc (dB) and Clay v1.0 metadata.yaml, sentinel-1-rtc (linear power);
# see ../shared/reference/clay-facts.md.
PRESETS: dict[str, NormalizationPreset] = {
    "clay-v1.5": NormalizationPreset(
        "clay-v1.5", "db", {"vv": -12.113, "vh": -18.673}, {"vv": 8.314, "vh": 8.017}
    ),
    "clay-v1": NormalizationPreset(
        "clay-v1", "linear", {"vv": 0.123273, "vh": 0.027337}, {"vv": 1.492154, "vh": 0.122182}
    ),
    # The embedded encoder's dB preset: per band, the median over the calibrated images of its
    # pretraining pool (labels unused) of each image's robust centre and spread (:func:`robust_band_stats`;
    # tests/test_normalization_runs.py recomputes it). Clay v1.5's 8.3 dB std is a global mean/std
    # that noise floor and ocean widen; this preset's spread is about half of it. With Clay's spread,
    # dB water sat much closer to land, in standard deviations, than in the 8-bit sources the encoder
    # mostly saw, and a run trained on 8-bit sources missed nearly all of it (docs/quality.md).
    "floodlora-mini": NormalizationPreset(
        "floodlora-mini", "db", {"vv": -11.05, "vh": -18.73}, {"vv": 3.73, "vh": 4.69}
    ),
}


def preset_from_stats(stats: dict[str, Any], name: str = "stats") -> NormalizationPreset:
    """A preset from a :func:`compute_stats` result (or the YAML it was saved to)."""
    try:
        units = stats["units"]
        bands = stats["bands"]
        mean = {b: float(v["mean"]) for b, v in bands.items()}
        std = {b: max(float(v["std"]), 1e-6) for b, v in bands.items()}
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{name}: not a floodlora stats file (missing {err})") from err
    return NormalizationPreset(name, units, mean, std, source=stats)


def load_stats(path: str | Path) -> dict[str, Any]:
    """Read a stats YAML written by ``floodlora stats``."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: normalisation stats file not found (names: auto, {', '.join(PRESETS)})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({err.__class__.__name__})") from err
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
        raise ConfigError(f"{p}: not a floodlora stats file (expected format: {STATS_FORMAT})")
    return data


def save_stats(stats: dict[str, Any], path: str | Path) -> None:
    """Write statistics atomically as YAML (a run records this file)."""
    import yaml

    from floodlora.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(stats, sort_keys=False))


def get_preset(
    name_or_stats_path: str,
    units: str,
    stats: dict[str, Any] | None = None,
    base: str = "clay-v1.5",
) -> NormalizationPreset:
    """Resolve ``auto`` / ``clay-v1.5`` / ``clay-v1`` / a stats YAML for data in `units`.

    ``auto``: calibrated data (``db`` or ``linear``) -> `base`, the preset the encoder was pretrained
    with (clay-v1: linear power, clay-v1.5 and the embedded encoder: dB; values are converted to the
    preset's units); ``scaled-uint8`` -> the per-source `stats` computed on the training chips
    (required: the 8-bit scaling is unknown).
    """
    name = name_or_stats_path
    if name == "auto":
        if units in ("db", "linear"):
            if base not in PRESETS:
                raise ConfigError(f"normalization auto: unknown base preset {base!r} ({', '.join(PRESETS)})")
            return PRESETS[base]
        if units == "scaled-uint8":
            if stats is None:
                raise ConfigError(
                    "normalization auto: scaled-uint8 data needs statistics from its training chips "
                    "(the DataModule computes them; or run `floodlora stats`)"
                )
            return preset_from_stats(stats, "auto-stats")
        raise ConfigError(f"normalization auto: unknown units {units!r}")
    preset = PRESETS[name] if name in PRESETS else preset_from_stats(load_stats(name), str(name))
    if preset.units != units and "scaled-uint8" in (preset.units, units):
        raise ConfigError(
            f"normalization {name}: expects {preset.units} values but the data are {units}; "
            "use normalization: auto or a stats YAML computed on this source"
        )
    return preset


#: ``data.normalization: per-scene``: every scene (event) is standardised with robust statistics of
#: its own pixels, so that 8-bit rescaled and calibrated sources, and scenes calibrated differently,
#: look alike to the model. No labels are used; a whole scene given to ``predict`` is its own event.
PER_SCENE = "per-scene"
#: ``data.normalization: per-scene-8bit``: 8-bit rescaled scenes (whose scaling is unknown and differs
#: between scenes) standardised per scene; calibrated dB / linear data keep the encoder's preset.
PER_SCENE_8BIT = "per-scene-8bit"
#: ``data.normalization: per-view-8bit``: as :data:`PER_SCENE_8BIT`, but each view (pre, post) of an
#: 8-bit scene has statistics of its own: 8-bit products stretch each image separately, so the same
#: dry field can sit at different levels before and after the event.
PER_VIEW_8BIT = "per-view-8bit"
SCENE_MODES = (PER_SCENE, PER_SCENE_8BIT, PER_VIEW_8BIT)
#: The scene modes that standardise only 8-bit rescaled scenes (calibrated ones keep the preset).
SCENE_MODES_8BIT = (PER_SCENE_8BIT, PER_VIEW_8BIT)
#: Pixels sampled per chip (a regular stride) for per-scene statistics: enough for a median.
_SCENE_STRIDE = 4


def robust_band_stats(arrays: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per band (median, robust std) over (band, values, valid) triples; std = (p84 - p16) / 2.

    Robust statistics, not mean/std: the water fraction and the -40 dB noise floor of a scene move a
    mean/std far more than its land backscatter, which is what the standardisation should align.
    """
    pooled: dict[str, list[np.ndarray]] = {}
    for band, values, valid in arrays:
        v = values[::_SCENE_STRIDE, ::_SCENE_STRIDE][valid[::_SCENE_STRIDE, ::_SCENE_STRIDE]]
        v = v[np.isfinite(v)]
        if v.size:
            pooled.setdefault(band, []).append(v.astype(np.float32))
    out: dict[str, tuple[float, float]] = {}
    for band, parts in pooled.items():
        x = np.concatenate(parts)
        p16, p50, p84 = np.percentile(x, [16, 50, 84])
        out[band] = (float(p50), max(float(p84 - p16) / 2, 1e-3))
    return out


def stats_key(view: str, band: str) -> str:
    """The key of a per-view statistic in a preset (``post:vv``); plain band keys serve every view."""
    return f"{view}:{band}"


def scene_preset(samples: Iterable[Sample], name: str, per_view: bool = False) -> NormalizationPreset:
    """A :data:`PER_SCENE` preset from the samples of one scene: every view's valid pixels pooled per
    band (pre and post together, so a change between them stays visible), or, with `per_view`, per
    view and band (:data:`PER_VIEW_8BIT`); linear becomes dB."""
    units: str | None = None

    def triples() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        nonlocal units
        for s in samples:
            u = "db" if s.meta.units in ("db", "linear") else s.meta.units
            if units is None:
                units = u
            elif u != units:
                raise DataError(f"{s.meta.chip_id}: units {s.meta.units} differ from {units} within {name}")
            for view, band_arrays in s.views.items():
                for band, arr in band_arrays.items():
                    x = to_db(arr) if s.meta.units == "linear" else arr
                    yield (stats_key(view, band) if per_view else band), x, s.valid

    stats = robust_band_stats(triples())
    if not stats or units is None:
        raise DataError(f"{name}: no valid pixels to standardise the scene with")
    return NormalizationPreset(
        f"{PER_SCENE}:{name}",
        units,
        {b: m for b, (m, _) in stats.items()},
        {b: s for b, (_, s) in stats.items()},
    )


#: What the domain-shift warning advises (not said where the adaptation is already running).
SHIFT_ADVICE = (
    "a few labelled chips of the scene set its operating point: "
    "floodlora adapt RUN --data CHIPS --out NEW_RUN"
)


def calibrated_run_preset(
    run_presets: Mapping[str, NormalizationPreset],
    units: str,
    base: str,
    what: str = "data",
    advice: str | None = SHIFT_ADVICE,
) -> NormalizationPreset:
    """A trained run's preset for calibrated (`db` / `linear`) `what`.

    The run's own calibrated preset when it has one; a run trained on 8-bit rescaled sources only
    gets the encoder's `base` preset, with a warning (ending in `advice`, if any): the model never saw
    calibrated backscatter.
    """
    import warnings

    calibrated = [p for p in run_presets.values() if p.units in ("db", "linear")]
    if calibrated:
        return calibrated[0]
    then = f"; {advice}" if advice else ""
    warnings.warn(
        f"the run was trained on 8-bit rescaled sources only ({', '.join(sorted(run_presets))}); "
        f"normalising these {units} {what} with the encoder's {base} preset: expect a domain shift "
        f"(such runs under-flag water in calibrated scenes, docs/quality.md){then}",
        stacklevel=3,
    )
    return get_preset("auto", units, None, base)


def normalize_sample(
    sample: Sample, bands: Iterable[str], preset: NormalizationPreset
) -> dict[str, np.ndarray]:
    """Per view a float32 [C, H, W] array in `bands` order; missing band or nodata pixel = 0 (the mean)."""
    bands = list(bands)
    h, w = sample.shape
    out: dict[str, np.ndarray] = {}
    for view, band_arrays in sample.views.items():
        arr = np.zeros((len(bands), h, w), dtype=np.float32)
        for i, band in enumerate(bands):
            if band not in band_arrays:
                continue
            key = stats_key(view, band) if stats_key(view, band) in preset.mean else band
            if key not in preset.mean:
                raise ConfigError(f"normalization {preset.name}: no statistics for {view} band {band}")
            x = convert_units(band_arrays[band], sample.meta.units, preset.units, sample.meta.chip_id)
            z = (x - np.float32(preset.mean[key])) / np.float32(preset.std[key])
            arr[i] = np.where(np.isfinite(z), z, 0.0)
        out[view] = arr
    return out


# --------------------------------------------------------------------------------------------------
# per-dataset statistics
# --------------------------------------------------------------------------------------------------


def compute_stats(refs: Iterable[Any], max_chips: int | None = None) -> dict[str, Any]:
    """:func:`sample_stats` of the chips `refs` point to, read one at a time (at most `max_chips`)."""
    import itertools

    from floodlora.data.sources import read_sample

    return sample_stats(read_sample(ref) for ref in itertools.islice(refs, max_chips))


def sample_stats(samples: Iterable[Sample]) -> dict[str, Any]:
    """Per-band mean/std/min/max over the valid pixels of every view, streamed sample by sample.

    Linear samples are converted to dB so that db and linear sources can be pooled; mixing
    ``scaled-uint8`` with calibrated data is an error (their numbers mean different things).
    """
    acc = {b: np.zeros(3, dtype=np.float64) for b in BANDS}  # count, sum, sum of squares
    lo = {b: np.inf for b in BANDS}
    hi = {b: -np.inf for b in BANDS}
    units: str | None = None
    sources: set[str] = set()
    events: set[str] = set()
    n = 0
    for s in samples:
        u = "db" if s.meta.units == "linear" else s.meta.units
        if units is None:
            units = u
        elif u != units:
            raise DataError(
                f"{s.meta.chip_id}: units {s.meta.units} differ from {units}; compute stats per source"
            )
        for band_arrays in s.views.values():
            for band, arr in band_arrays.items():
                x = to_db(arr) if s.meta.units == "linear" else arr
                v = x[s.valid & np.isfinite(x)].astype(np.float64)
                if v.size:
                    acc[band] += (v.size, v.sum(), np.square(v).sum())
                    lo[band] = min(lo[band], float(v.min()))
                    hi[band] = max(hi[band], float(v.max()))
        sources.add(s.meta.source)
        events.add(s.meta.event)
        n += 1
    if n == 0:
        raise DataError("empty dataset: no chips to compute statistics on")
    out_bands: dict[str, dict[str, float]] = {}
    for band, (count, total, sq) in acc.items():
        if count == 0:
            continue
        mean = total / count
        var = max(sq / count - mean * mean, 0.0)
        out_bands[band] = {
            "mean": round(float(mean), 6),
            "std": round(float(np.sqrt(var)), 6),
            "min": round(lo[band], 6),
            "max": round(hi[band], 6),
            "count": int(count),
        }
    return {
        "format": STATS_FORMAT,
        "version": 1,
        "units": units,
        "n_chips": n,
        "sources": sorted(sources),
        "events": sorted(events),
        "bands": out_bands,
    }


# --------------------------------------------------------------------------------------------------
# speckle filters (optional; on linear intensity)
# --------------------------------------------------------------------------------------------------


def _fill_nan(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bad = ~np.isfinite(img)
    if not bad.any():
        return img.astype(np.float64), bad
    fill = float(np.nanmean(img)) if (~bad).any() else 0.0
    return np.where(bad, fill, img).astype(np.float64), bad


def _lee_weight(mean: np.ndarray, var: np.ndarray, looks: float) -> np.ndarray:
    """Lee (1980) MMSE weight: var_x = (var - mean^2/L)/(1 + 1/L), b = var_x / var, in [0, 1]."""
    cu2 = 1.0 / looks
    var_x = (var - mean * mean * cu2) / (1.0 + cu2)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(var > 0, var_x / var, 0.0)
    return np.clip(b, 0.0, 1.0)


def lee_filter(img: ArrayLike, size: int = 7, looks: float = 4.4) -> np.ndarray:
    """Lee (1980) adaptive filter on linear intensity in a `size` x `size` box; NaN stays NaN."""
    from scipy.ndimage import uniform_filter

    x, bad = _fill_nan(np.asarray(img))
    mean = uniform_filter(x, size, mode="reflect")
    var = np.maximum(uniform_filter(x * x, size, mode="reflect") - mean * mean, 0.0)
    out = mean + _lee_weight(mean, var, looks) * (x - mean)
    out[bad] = np.nan
    return out.astype(np.float32)


def _refined_lee_kernels() -> list[np.ndarray]:
    """The 8 edge-aligned 7x7 half-windows of the refined Lee filter (Lee 1981), normalised."""
    r, c = np.mgrid[-3:4, -3:4]
    halves = [c <= 0, c >= 0, r <= 0, r >= 0, r - c >= 0, r - c <= 0, r + c >= 0, r + c <= 0]
    return [h.astype(np.float64) / h.sum() for h in halves]


def refined_lee_filter(img: ArrayLike, looks: float = 4.4) -> np.ndarray:
    """Refined Lee (Lee 1981) on linear intensity: statistics from the 7x7 half-window on the
    homogeneous side of the strongest local edge, so that edges (shorelines) stay sharp."""
    from scipy.ndimage import correlate, shift, uniform_filter

    x, bad = _fill_nan(np.asarray(img))
    m3 = uniform_filter(x, 3, mode="reflect")

    def block(dr: int, dc: int) -> np.ndarray:  # mean of the 3x3 block centred at (r+dr, c+dc)
        return shift(m3, (-dr, -dc), order=0, mode="nearest")

    # opposite block pairs per direction, in kernel order: (side A, side B)
    pairs = [((0, -2), (0, 2)), ((-2, 0), (2, 0)), ((2, -2), (-2, 2)), ((-2, -2), (2, 2))]
    centre = m3
    grads, sides = [], []
    for a, b in pairs:
        ma, mb = block(*a), block(*b)
        grads.append(np.abs(ma - mb))
        sides.append(np.abs(ma - centre) <= np.abs(mb - centre))  # True: pixel belongs with side A
    direction = np.argmax(np.stack(grads), axis=0)
    side_a = np.take_along_axis(np.stack(sides), direction[None], axis=0)[0]
    choice = direction * 2 + np.where(side_a, 0, 1)
    kernels = _refined_lee_kernels()
    # kernel order: left, right, top, bottom, lower-left, upper-right, lower-right, upper-left
    mapping = [0, 1, 2, 3, 4, 5, 7, 6]  # direction pair index*2+side -> kernel index
    mean = np.zeros_like(x)
    var = np.zeros_like(x)
    for k_idx, kernel_i in enumerate(mapping):
        sel = choice == k_idx
        if not sel.any():
            continue
        k = kernels[kernel_i]
        mk = correlate(x, k, mode="reflect")
        vk = np.maximum(correlate(x * x, k, mode="reflect") - mk * mk, 0.0)
        mean[sel] = mk[sel]
        var[sel] = vk[sel]
    out = mean + _lee_weight(mean, var, looks) * (x - mean)
    out[bad] = np.nan
    return out.astype(np.float32)


SPECKLE_FILTERS = ("lee", "refined-lee")


def despeckle_sample(sample: Sample, method: str, size: int = 7, looks: float = 4.4) -> Sample:
    """Apply a speckle filter to every view/band in place (in linear power for db/linear data)."""
    if method not in SPECKLE_FILTERS:
        raise ConfigError(f"unknown speckle filter {method!r}; expected one of {', '.join(SPECKLE_FILTERS)}")
    units = sample.meta.units
    for bands in sample.views.values():
        for band, arr in bands.items():
            lin = to_linear(arr) if units == "db" else arr
            filt = lee_filter(lin, size, looks) if method == "lee" else refined_lee_filter(lin, looks)
            bands[band] = to_db(filt) if units == "db" else filt
    return sample
