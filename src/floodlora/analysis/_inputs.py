"""Turning canonical samples into model inputs for analysis (embeddings, panels).

Analysis runs the encoder on a handful of chips outside the DataModule, so it needs the same
normalisation rules in a few lines: ``auto`` on 8-bit rescaled chips (OMBRIA, ETCI) has no published
statistics, so the statistics are taken from the chips being analysed (documented in docs/analysis.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from floodlora.data.sample import MASK_NODATA, Sample
from floodlora.errors import DataError, size_text

if TYPE_CHECKING:
    from floodlora.data.sar import NormalizationPreset


def sample_stats(samples: Sequence[Sample]) -> dict[str, Any]:
    """Per-band mean/std over the valid pixels of `samples`, in the floodlora stats format."""
    units = {s.meta.units for s in samples}
    if len(units) != 1:
        raise DataError(f"samples mix units {sorted(units)}; analyse one source at a time")
    acc: dict[str, list[float]] = {}
    for s in samples:
        for bands in s.views.values():
            for band, arr in bands.items():
                v = arr[s.valid & np.isfinite(arr)].astype(np.float64)
                a = acc.setdefault(band, [0.0, 0.0, 0.0])
                a[0] += v.size
                a[1] += float(v.sum())
                a[2] += float(np.square(v).sum())
    out: dict[str, dict[str, float]] = {}
    for band, (n, total, sq) in acc.items():
        if n == 0:
            continue
        mean = total / n
        out[band] = {"mean": mean, "std": float(np.sqrt(max(sq / n - mean * mean, 1e-12)))}
    return {"format": "floodlora-stats", "units": units.pop(), "bands": out}


def resolve_preset(
    samples: Sequence[Sample],
    normalization: str | NormalizationPreset = "auto",
    stats: dict[str, Any] | None = None,
) -> NormalizationPreset:
    """The normalisation preset for `samples`; scaled-uint8 + auto falls back to the chips' own stats.

    A ready preset (e.g. the DataModule's, from the training chips) is used as is.
    """
    from floodlora.data.sar import PER_SCENE, PER_SCENE_8BIT, NormalizationPreset, get_preset, scene_preset

    if isinstance(normalization, NormalizationPreset):
        return normalization
    if not samples:
        raise DataError("no samples to analyse")
    units = samples[0].meta.units
    if normalization == PER_SCENE or (normalization == PER_SCENE_8BIT and units == "scaled-uint8"):
        return scene_preset(samples, "the analysed chips")
    if normalization == PER_SCENE_8BIT:
        normalization = "auto"
    if normalization == "auto" and units == "scaled-uint8" and stats is None:
        stats = sample_stats(samples)
    return get_preset(normalization, units, stats)


def square_crop(sample: Sample, size: int | None, multiple: int = 8) -> Sample:
    """Centre crop to a square whose side is `size` (or the largest multiple of `multiple` that fits)."""
    h, w = sample.shape
    side = min(h, w) if size is None else size
    side -= side % multiple
    if side <= 0 or side > min(h, w):
        raise DataError(f"{sample.meta.chip_id}: cannot crop {size_text(h, w)} to {size_text(side, side)}")
    if (h, w) == (side, side):
        return sample
    r0, c0 = (h - side) // 2, (w - side) // 2
    sl = (slice(r0, r0 + side), slice(c0, c0 + side))
    views = {v: {b: a[sl] for b, a in bands.items()} for v, bands in sample.views.items()}
    mask = None if sample.mask is None else sample.mask[sl]
    return Sample(views=views, mask=mask, meta=sample.meta, valid=sample.valid[sl])


def ignore_map(sample: Sample) -> np.ndarray:
    """True where a pixel must not be scored or labelled: invalid imagery or a nodata label."""
    bad = ~sample.valid
    if sample.mask is not None:
        bad = bad | (sample.mask == MASK_NODATA)
    return bad


def view_tensor(
    sample: Sample, view: str, bands: Sequence[str], preset: NormalizationPreset
) -> np.ndarray | None:
    """Normalised float32 [C, H, W] for one view of a sample, or None when the view is absent."""
    from floodlora.data.sar import normalize_sample

    if view not in sample.views:
        return None
    sub = Sample(views={view: sample.views[view]}, mask=None, meta=sample.meta, valid=sample.valid)
    return normalize_sample(sub, bands, preset)[view]
