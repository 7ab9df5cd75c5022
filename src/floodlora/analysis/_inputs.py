"""Turning canonical samples into model inputs for analysis (embeddings, panels).

Analysis runs the encoder on a handful of chips outside the DataModule, so it needs the same
normalisation rules in a few lines: ``auto`` on 8-bit rescaled chips (OMBRIA, ETCI) has no published
statistics, so the statistics are taken from the chips being analysed (documented in docs/analysis.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from floodlora.data.sample import MASK_NODATA, Sample, centre_window
from floodlora.errors import DataError, size_text

if TYPE_CHECKING:
    from floodlora.data.sar import NormalizationPreset


def resolve_preset(
    samples: Sequence[Sample],
    normalization: str | NormalizationPreset = "auto",
    stats: dict[str, Any] | None = None,
) -> NormalizationPreset:
    """The normalisation preset for `samples`; scaled-uint8 + auto falls back to the chips' own stats.

    A ready preset (e.g. the DataModule's, from the training chips) is used as is.
    """
    from floodlora.data.sar import (
        PER_SCENE,
        PER_VIEW_8BIT,
        SCENE_MODES_8BIT,
        NormalizationPreset,
        get_preset,
        sample_stats,
        scene_preset,
    )

    if isinstance(normalization, NormalizationPreset):
        return normalization
    if not samples:
        raise DataError("no samples to analyse")
    units = samples[0].meta.units
    if normalization == PER_SCENE or (normalization in SCENE_MODES_8BIT and units == "scaled-uint8"):
        return scene_preset(samples, "the analysed chips", per_view=normalization == PER_VIEW_8BIT)
    if normalization in SCENE_MODES_8BIT:
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
    sl = centre_window(h, w, side, side)
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
