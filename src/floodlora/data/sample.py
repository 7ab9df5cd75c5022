"""The canonical sample every reader produces, so that nothing downstream knows the on-disk format.

A sample is named views (``pre``, ``post``, ``pre_asc`` ...) -> bands (``vv``, ``vh``) -> float32
``H x W`` arrays in the sample's units, a uint8 mask (0 dry, 1 flood/water, 255 nodata), a boolean
``valid`` map (False wherever any present view/band is nodata) and a little metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from floodlora.errors import DataError, size_text

VIEWS: tuple[str, ...] = ("pre", "post", "pre_asc", "pre_desc", "post_asc", "post_desc")
BANDS: tuple[str, ...] = ("vv", "vh")
UNITS: tuple[str, ...] = ("db", "linear", "scaled-uint8")
MASK_DRY, MASK_FLOOD, MASK_NODATA = 0, 1, 255


@dataclass
class SampleMeta:
    """Where a chip comes from and how to interpret its numbers."""

    chip_id: str
    event: str
    source: str
    units: str
    split: str | None = None
    crs: str | None = None  # WKT
    transform: tuple[float, float, float, float, float, float] | None = None  # affine a, b, c, d, e, f
    date: str | None = None  # ISO 8601 date or datetime of the (post-event) acquisition
    lat: float | None = None
    lon: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)  # view -> its own acquisition date, where known

    def view_date(self, view: str) -> str | None:
        """The acquisition date of `view`: its own, else `date` for a post-event view, else unknown.

        A pre-event view never borrows the post-event date: the time code is zeros when its own date
        is not known (Clay's convention for an unknown time).
        """
        own = self.dates.get(view)
        if own:
            return own
        return self.date if view.startswith("post") else None


@dataclass
class Sample:
    """One chip in canonical form; `valid` is derived from the data when not given."""

    views: dict[str, dict[str, np.ndarray]]
    mask: np.ndarray | None
    meta: SampleMeta
    valid: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.valid is None:
            self.valid = compute_valid(self.views, self.shape)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) shared by every view, band and the mask."""
        for bands in self.views.values():
            for arr in bands.values():
                return (int(arr.shape[0]), int(arr.shape[1]))
        if self.mask is not None:
            return (int(self.mask.shape[0]), int(self.mask.shape[1]))
        raise DataError(f"{self.meta.chip_id}: sample has no views and no mask")

    def nodata_fraction(self) -> float:
        """Fraction of pixels that are unusable (invalid imagery or nodata label)."""
        bad = ~self.valid
        if self.mask is not None:
            bad = bad | (self.mask == MASK_NODATA)
        return float(bad.mean())


def centre_window(h: int, w: int, th: int, tw: int) -> tuple[slice, slice]:
    """Rows and columns of the `th` x `tw` window centred in an `h` x `w` array (the one centre crop)."""
    y0, x0 = (h - th) // 2, (w - tw) // 2
    return slice(y0, y0 + th), slice(x0, x0 + tw)


def compute_valid(views: dict[str, dict[str, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """Valid = finite in every present view and band (readers encode nodata as NaN).

    Arrays of another shape are skipped here; :func:`check_sample` reports them with the file name.
    """
    valid = np.ones(shape, dtype=bool)
    for bands in views.values():
        for arr in bands.values():
            if arr.shape == shape:
                valid &= np.isfinite(arr)
    return valid


def check_sample(sample: Sample, where: str) -> Sample:
    """Enforce the canonical invariants; `where` names the file(s) for the one-line error."""
    if sample.meta.units not in UNITS:
        raise DataError(f"{where}: unknown units {sample.meta.units!r}; expected one of {', '.join(UNITS)}")
    if not sample.views:
        raise DataError(f"{where}: no image views found")
    shape = None
    for view, bands in sample.views.items():
        if view not in VIEWS:
            raise DataError(f"{where}: unknown view {view!r}; expected one of {', '.join(VIEWS)}")
        for band, arr in bands.items():
            if band not in BANDS:
                raise DataError(f"{where}: unknown band {band!r} in view {view}")
            if arr.ndim != 2:
                raise DataError(f"{where}: {view}/{band} is not a 2-D image (shape {arr.shape})")
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DataError(
                    f"{where}: views have different shapes ({view}/{band} is {size_text(*arr.shape)}, "
                    f"expected {size_text(*shape)})"
                )
            if arr.dtype != np.float32:
                bands[band] = arr.astype(np.float32)
    if sample.mask is not None:
        if sample.mask.shape != shape:
            raise DataError(
                f"{where}: mask is {size_text(*sample.mask.shape)} but the image is {size_text(*shape)}"  # type: ignore[misc]
            )
        bad = np.setdiff1d(np.unique(sample.mask), [MASK_DRY, MASK_FLOOD, MASK_NODATA])
        if bad.size:
            raise DataError(
                f"{where}: mask values {bad[:5].tolist()} outside the declared classes "
                "(0 dry, 1 flood, 255 nodata)"
            )
        sample.mask = sample.mask.astype(np.uint8, copy=False)
    return sample
