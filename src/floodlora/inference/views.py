"""Scene input for predict: one GeoTIFF per view, its bands, nodata and grid, read tile by tile.

Views that do not share the post-event grid (CRS, transform, shape) are warped onto it through a
``WarpedVRT`` (still windowed) when ``align`` is on, or rejected with a message saying what differs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError, DataError, size_text
from floodlora.inference.tiling import Tile

UNITS = ("db", "linear")
POST_VIEWS = ("post", "post_asc", "post_desc")


# --------------------------------------------------------------------------------------------------
# reading views
# --------------------------------------------------------------------------------------------------


def band_name(description: str | None) -> str | None:
    """'vv' / 'vh' when a band description names exactly one of them (e.g. 'VV', 'Sigma0_VH_db')."""
    if not description:
        return None
    d = description.lower()
    has_vv, has_vh = "vv" in d, "vh" in d
    if has_vv == has_vh:
        return None
    return "vv" if has_vv else "vh"


def band_indexes(
    descriptions: Sequence[str | None], count: int, path: str
) -> tuple[dict[str, int], str | None]:
    """Band name -> 1-based index: from the descriptions when they name VV/VH, else VV, VH in order."""
    named = [band_name(d) for d in descriptions]
    found = {n for n in named if n}
    if found:
        out: dict[str, int] = {}
        for i, n in enumerate(named, start=1):
            if n is None:
                continue
            if n in out:
                raise DataError(f"{path}: bands {out[n]} and {i} are both described as {n.upper()}")
            out[n] = i
        return out, None
    note = None
    if count > 2:
        note = f"{path}: {count} bands without VV/VH descriptions; using band 1 as VV and band 2 as VH"
    return ({"vv": 1, "vh": 2} if count >= 2 else {"vv": 1}), note


@dataclass
class ViewReader:
    """Windowed reads of one view, as float32 with NaN wherever the input is nodata."""

    name: str
    path: Path
    dataset: Any  # rasterio dataset or WarpedVRT on the reference grid
    bands: dict[str, int]
    nodata: float | None
    dtype: str = "float32"  # the file's data type (before any warping)

    def read(self, tile: Tile) -> dict[str, np.ndarray]:
        """`tile`-sized arrays per band; pixels outside the scene are NaN."""
        from rasterio.windows import Window

        ds = self.dataset
        t = tile.size
        h = min(t, ds.height - tile.row)
        w = min(t, ds.width - tile.col)
        idx = list(self.bands.values())
        data = ds.read(idx, window=Window(tile.col, tile.row, w, h), out_dtype="float32")
        if self.nodata is not None and not math.isnan(self.nodata):
            data[data == np.float32(self.nodata)] = np.nan
        if h < t or w < t:
            full = np.full((len(idx), t, t), np.nan, dtype=np.float32)
            full[:, :h, :w] = data
            data = full
        return {b: data[i] for i, b in enumerate(self.bands)}

    def overview(self, max_side: int = 1024) -> dict[str, np.ndarray]:
        """The whole view decimated to at most `max_side` px a side, for scene statistics."""
        ds = self.dataset
        step = max(1, math.ceil(max(ds.height, ds.width) / max_side))
        shape = (len(self.bands), max(1, ds.height // step), max(1, ds.width // step))
        data = ds.read(list(self.bands.values()), out_shape=shape, out_dtype="float32")
        if self.nodata is not None and not math.isnan(self.nodata):
            data[data == np.float32(self.nodata)] = np.nan
        return {b: data[i] for i, b in enumerate(self.bands)}


def scene_statistics(readers: Mapping[str, ViewReader], bands: Sequence[str], units: str) -> Any:
    """The per-scene normalisation preset of a scene: robust statistics of every view's pixels."""
    from floodlora.data.sample import Sample, SampleMeta
    from floodlora.data.sar import scene_preset

    views: dict[str, dict[str, np.ndarray]] = {}
    for name, reader in readers.items():
        views[name] = {}
        for b, a in reader.overview().items():
            if b in bands:
                views[name][b] = np.where(a > 0, a, np.nan).astype(np.float32) if units == "linear" else a
    meta = SampleMeta(chip_id="scene", event="predict", source="scene", units=units)
    return scene_preset([Sample(views=views, mask=None, meta=meta)], "scene")


@dataclass
class Grid:
    """The output grid: the reference (post-event) view's CRS, transform and shape."""

    crs: Any
    transform: Any
    height: int
    width: int
    reference: str

    def describe(self) -> str:
        crs = self.crs.to_string() if self.crs else "no CRS"
        t = self.transform
        return f"{self.width}x{self.height} px, {crs}, pixel {t.a:g} x {t.e:g} at ({t.c:g}, {t.f:g})"


def input_warnings(readers: Mapping[str, ViewReader], model_views: Sequence[str], units: str) -> list[str]:
    """Inputs that run but most likely give a wrong map: no post-event view, 8-bit images read as dB."""
    out = []
    if any(v in POST_VIEWS for v in model_views) and not any(v in POST_VIEWS for v in readers):
        out.append(
            f"only pre-event view(s) given ({', '.join(readers)}): the map shows water before the event, "
            "not the flood; pass the post-event image with --view post=PATH"
        )
    if units == "db":
        for name, reader in readers.items():
            if reader.dtype == "uint8":
                out.append(
                    f"view {name}: {reader.path} is 8-bit (0-255) but is read as dB backscatter; "
                    "convert it to dB (or linear power with --units linear) first"
                )
    return out


def _grid_of(ds: Any, name: str) -> Grid:
    return Grid(ds.crs, ds.transform, ds.height, ds.width, name)


def _same_grid(a: Grid, b: Grid) -> bool:
    return (
        a.crs == b.crs
        and (a.height, a.width) == (b.height, b.width)
        and a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a)))
    )


@dataclass
class OpenViews:
    grid: Grid
    readers: dict[str, ViewReader]
    messages: list[str]
    aligned: list[str]


@contextmanager
def open_views(
    paths: Mapping[str, str | Path], model_views: Sequence[str], align: bool = True
) -> Iterator[OpenViews]:
    """Open every view, check it against the reference grid, warp it there if needed and allowed.

    The reference grid is the first post-event view given (else the first view).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.vrt import WarpedVRT

    unknown = [v for v in paths if v not in model_views]
    if unknown:
        raise ConfigError(
            f"view(s) {', '.join(unknown)} are not views of this model; "
            f"it was trained on {', '.join(model_views)}"
        )
    if not paths:
        raise ConfigError(f"no input view given; this model uses {', '.join(model_views)} (--view NAME=PATH)")
    ref_name = next((v for v in POST_VIEWS if v in paths), next(iter(paths)))
    messages: list[str] = []
    with ExitStack() as stack:
        datasets: dict[str, Any] = {}
        for name, p in paths.items():
            path = Path(p)
            if not path.is_file():
                raise DataError(f"{path}: view {name}: file not found")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    datasets[name] = stack.enter_context(rasterio.open(path))
            except RasterioIOError as err:
                raise DataError(
                    f"{path}: view {name}: not a readable raster ({str(err).splitlines()[0]})"
                ) from None
        grid = _grid_of(datasets[ref_name], ref_name)
        readers: dict[str, ViewReader] = {}
        aligned: list[str] = []
        for name, ds in datasets.items():
            path = Path(paths[name])
            bands, note = band_indexes(ds.descriptions, ds.count, str(path))
            if note:
                messages.append(note)
            g = _grid_of(ds, name)
            src = ds
            nodata = ds.nodata
            if name != ref_name and not _same_grid(g, grid):
                diff = _grid_difference(g, grid)
                if not align:
                    raise DataError(
                        f"views {name} and {ref_name} are not on the same grid ({diff}); "
                        f"reproject them, or allow warping onto the {ref_name} grid (--align)"
                    )
                if g.crs is None or grid.crs is None:
                    raise DataError(
                        f"views {name} and {ref_name} differ ({diff}) and one has no CRS, "
                        "so they cannot be aligned"
                    )
                if not _overlaps(ds, grid):
                    raise DataError(f"view {name} ({path}) does not overlap the {ref_name} scene at all")
                src = stack.enter_context(
                    WarpedVRT(
                        ds,
                        crs=grid.crs,
                        transform=grid.transform,
                        width=grid.width,
                        height=grid.height,
                        resampling=Resampling.bilinear,
                        nodata=float("nan"),
                        dtype="float32",
                        src_nodata=ds.nodata,
                    )
                )
                nodata = None
                aligned.append(name)
                messages.append(
                    f"aligned view {name} onto the {ref_name} grid by bilinear warping ({diff}); "
                    "pixels it does not cover are nodata"
                )
            readers[name] = ViewReader(name, path, src, bands, nodata, str(ds.dtypes[0]))
        yield OpenViews(grid, readers, messages, aligned)


def _grid_difference(a: Grid, b: Grid) -> str:
    parts = []
    if a.crs != b.crs:
        parts.append(
            f"CRS {a.crs.to_string() if a.crs else 'none'} vs {b.crs.to_string() if b.crs else 'none'}"
        )
    if (a.height, a.width) != (b.height, b.width):
        parts.append(f"shape {size_text(a.height, a.width)} vs {size_text(b.height, b.width)}")
    if not a.transform.almost_equals(b.transform):
        parts.append("transform differs")
    return ", ".join(parts) or "grid differs"


def _overlaps(ds: Any, grid: Grid) -> bool:
    from rasterio.coords import disjoint_bounds
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    target = array_bounds(grid.height, grid.width, grid.transform)
    src = transform_bounds(ds.crs, grid.crs, *ds.bounds)
    left, bottom, right, top = target
    return not disjoint_bounds((left, bottom, right, top), src)
