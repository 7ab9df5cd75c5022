"""Shared pieces of the readers: the chip reference, bounded directory walks, image reading.

Every failure becomes a one-line :class:`DataError` that names the file and the problem, so that the
CLI can print it without a traceback.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from floodlora.config import DEFAULT_LABEL_KIND
from floodlora.errors import DataError

if TYPE_CHECKING:
    from floodlora.data.sample import SampleMeta

MAX_DEPTH = 5  # how deep discovery looks below a root (datasets nest 2-4 levels)


@dataclass
class ChipRef:
    """A pointer to one chip on disk: cheap to create, picklable (safe for DataLoader workers)."""

    chip_id: str
    event: str
    format: str
    split: str | None
    files: dict[str, str]  # role (e.g. "post", "vv", "mask") -> path
    units: str
    labelled: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reader(self) -> ModuleType:
        """The reader module for this chip's format (imported lazily)."""
        return importlib.import_module(f"floodlora.data.sources.{self.format}")

    def path(self, role: str) -> Path:
        return Path(self.files[role])

    @property
    def label_kind(self) -> str:
        """What the chip's label marks: ``flood`` (new water) or ``water`` (all water), per source."""
        return str(self.extra.get("labels") or getattr(self.reader, "LABELS", DEFAULT_LABEL_KIND))

    @property
    def key(self) -> str:
        """A chip's identity across roots: source format and file path (chip ids repeat between roots)."""
        return f"{self.format}:{sorted(self.files.values())[0]}"


def walk(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk limited to `max_depth` levels, in sorted order so discovery is deterministic."""
    root = Path(root)
    base = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        path = Path(dirpath)
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if len(path.parts) - base >= max_depth:
            dirnames[:] = []
        yield path, dirnames, sorted(filenames)


def require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def read_png(path: str | Path) -> np.ndarray:
    """Read an 8-bit image as a 2-D uint8 array; RGB with identical channels keeps the first."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    require_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable or corrupt image ({_short(err)})") from err
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return arr


@dataclass
class Raster:
    """The pixels and the georeferencing of one GeoTIFF."""

    data: np.ndarray  # [C, H, W]
    crs: str | None
    transform: tuple[float, float, float, float, float, float] | None
    nodata: float | None
    descriptions: tuple[str | None, ...]


def read_tif(path: str | Path, bands: int | None = None) -> Raster:
    """Read a GeoTIFF; `bands` checks the band count. Georeferencing is kept when present."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if bands is not None and ds.count != bands:
                    raise DataError(f"{path}: wrong band count: expected {bands}, found {ds.count}")
                data = ds.read()
                crs = ds.crs.to_wkt() if ds.crs else None
                t = ds.transform
                transform = None if t.is_identity else (t.a, t.b, t.c, t.d, t.e, t.f)
                return Raster(data, crs, transform, ds.nodata, tuple(ds.descriptions))
    except DataError:
        raise
    except (RasterioError, OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable or corrupt image ({_short(err)})") from err


def to_float(arr: np.ndarray, nodata: float | None = None, zero_is_nodata: bool = False) -> np.ndarray:
    """float32 copy with nodata (and, where declared, exact zeros) replaced by NaN."""
    out = arr.astype(np.float32, copy=True)
    if nodata is not None and not np.isnan(nodata):
        out[arr == nodata] = np.nan
    if zero_is_nodata:
        out[arr == 0] = np.nan
    return out


def binary_mask(arr: np.ndarray, path: str | Path, mapping: dict[int, int]) -> np.ndarray:
    """Map a label image to 0/1/255 with `mapping`; any other value is a one-line error."""
    values = np.unique(arr)
    unknown = [v for v in values.tolist() if v not in mapping]
    if unknown:
        declared = ", ".join(str(k) for k in mapping)
        raise DataError(f"{path}: mask values {unknown[:5]} outside the declared classes ({declared})")
    out = np.full(arr.shape, 255, dtype=np.uint8)
    for src, dst in mapping.items():
        out[arr == src] = dst
    return out


def center_latlon(
    crs: str | None, transform: tuple[float, ...] | None, shape: tuple[int, int]
) -> tuple[float | None, float | None]:
    """Latitude/longitude of the chip centre (for Clay's location encoding), None if unknown."""
    if crs is None or transform is None:
        return None, None
    a, b, c, d, e, f = transform[:6]
    col, row = shape[1] / 2.0, shape[0] / 2.0
    x, y = a * col + b * row + c, d * col + e * row + f
    try:
        from rasterio.crs import CRS
        from rasterio.warp import transform as warp

        src = CRS.from_wkt(crs)
        if src.is_geographic:
            return float(y), float(x)
        xs, ys = warp(src, CRS.from_epsg(4326), [x], [y])
        return float(ys[0]), float(xs[0])
    except Exception:  # an exotic CRS must not stop reading; the location is optional metadata
        return None, None


def georeferenced_meta(
    ref: ChipRef,
    source: str,
    units: str,
    crs: str | None,
    transform: tuple[float, ...] | None,
    shape: tuple[int, int],
) -> SampleMeta:
    """Metadata of a GeoTIFF chip: its CRS, transform and the lat/lon of its centre."""
    from floodlora.data.sample import SampleMeta

    lat, lon = center_latlon(crs, transform, shape)
    return SampleMeta(
        chip_id=ref.chip_id, event=ref.event, source=source, units=units, split=ref.split,
        crs=crs, transform=transform, lat=lat, lon=lon,
    )  # fmt: skip


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:160] if str(err) else err.__class__.__name__
