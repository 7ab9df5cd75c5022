"""Reference water and terrain exclusions on a scene's grid, for the flood map's classes.

A flood map a responder can act on keeps water that is always there (reference water) apart from
the flood, and says where the radar cannot see a flood at all (exclusions). This module reads
those layers and puts them on the scene's pixel grid; :mod:`floodlora.inference.classes` turns them
into classes.

* Reference water: JRC Global Surface Water occurrence (STAC collection ``jrc-gsw``, asset
  ``occurrence``, percent of valid observations 1984-2021 that saw water), or any local GeoTIFF.
  Pixels at or above an occurrence threshold are reference water; a 0/1 layer works with any
  threshold in (0, 1].
* Terrain: a DEM (STAC ``cop-dem-glo-30``, or a local GeoTIFF) resampled to a metric grid over the
  scene, then height above nearest drainage (HAND) and slope computed with pysheds (depression
  filling, D8 flow directions and accumulation, HAND to cells draining more than a set area),
  and radar shadow / layover from the local terrain tilt along the range direction against the
  incidence angle (the item's geometry: incidence angle and pass direction).

Every layer that is not on the scene's grid is warped onto it (and the messages say so); a layer
that does not cover the scene is an error, not a silent hole in the map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError, DataError

JRC_COLLECTION = "jrc-gsw"
JRC_ASSET = "occurrence"
DEM_COLLECTION = "cop-dem-glo-30"
DEM_ASSET = "data"
COVER_FRACTION = 0.99  # a STAC mosaic must fill this much of the scene
DEFAULT_INCIDENCE_DEG = 38.0  # Sentinel-1 IW mid-swath, when the item does not say
# Sentinel-1 ground-track headings (degrees clockwise from north); the radar looks right of track.
HEADING_DEG = {"ascending": 347.0, "descending": 193.0}


class LayerError(DataError):
    """An ancillary layer (reference water, DEM) is unreadable or does not cover the scene."""


@dataclass
class SceneGrid:
    """Where the layers go: the scene's CRS, affine transform and size."""

    crs: Any
    transform: Any
    width: int
    height: int


@dataclass
class TerrainOptions:
    """Thresholds of the terrain and radar-geometry exclusions (None switches a rule off)."""

    hand_max_m: float | None = 15.0  # higher above the nearest drainage: a flood cannot be there
    slope_max_deg: float | None = 15.0  # steeper: water does not stay
    drainage_km2: float = 1.0  # upstream area that makes a drainage cell, for HAND
    shadow_layover: bool = True  # exclude radar shadow and layover computed from the DEM
    incidence_deg: float | None = None  # None: the item's, else DEFAULT_INCIDENCE_DEG
    orbit_state: str | None = None  # ascending | descending: the look direction
    resolution_m: float = 30.0  # grid the terrain is computed on (the DEM's own is 30 m)

    def __post_init__(self) -> None:
        if self.hand_max_m is not None and self.hand_max_m <= 0:
            raise ConfigError(f"--hand-max must be > 0 metres, got {self.hand_max_m}")
        if self.slope_max_deg is not None and not 0 < self.slope_max_deg < 90:
            raise ConfigError(f"--slope-max must be in (0, 90) degrees, got {self.slope_max_deg}")
        if self.drainage_km2 <= 0 or self.resolution_m <= 0:
            raise ConfigError("the drainage area and the terrain resolution must be > 0")
        if self.incidence_deg is not None and not 10 <= self.incidence_deg <= 70:
            raise ConfigError(f"--incidence-angle must be in [10, 70] degrees, got {self.incidence_deg}")
        if self.orbit_state not in (None, "ascending", "descending"):
            raise ConfigError(f"--orbit-state must be ascending or descending, got {self.orbit_state!r}")


@dataclass
class Exclusions:
    """Excluded pixels on the scene grid and why (pixel counts per rule, rules overlap)."""

    excluded: np.ndarray  # bool H x W
    counts: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# reading any raster layer onto the scene grid
# --------------------------------------------------------------------------------------------------


def _grid_text(crs: Any, transform: Any) -> str:
    name = crs.to_string() if crs else "no CRS"
    return f"{name}, {abs(transform.a):.6g} x {abs(transform.e):.6g} pixels"


def _same_grid(ds: Any, grid: SceneGrid) -> bool:
    return (
        ds.crs == grid.crs
        and (ds.width, ds.height) == (grid.width, grid.height)
        and ds.transform.almost_equals(grid.transform, precision=1e-6 * max(1.0, abs(grid.transform.a)))
    )


def _scene_bounds(grid: SceneGrid) -> tuple[float, float, float, float]:
    """West, south, east, north of the scene in its CRS."""
    from rasterio.transform import array_bounds

    return array_bounds(grid.height, grid.width, grid.transform)


def read_on_grid(
    sources: Sequence[str], grid: SceneGrid, what: str, resampling: str = "nearest", local: bool = True
) -> tuple[np.ndarray, list[str]]:
    """float32 `H x W` on `grid` from one file (or a mosaic of STAC assets; the first valid wins).

    NaN where no source has data. A local file must contain the scene (its bounds), a mosaic must
    fill COVER_FRACTION of it; otherwise LayerError, one line.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    if grid.crs is None:
        raise LayerError(f"{what}: the scene has no CRS, so no layer can be placed on it")
    out = np.full((grid.height, grid.width), np.nan, dtype=np.float32)
    messages: list[str] = []
    for src_path in sources:
        try:
            with rasterio.open(src_path) as src:
                if src.crs is None:
                    raise LayerError(f"{what} {src_path}: the file has no CRS")
                if local:
                    x0, y0, x1, y1 = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
                    w, s, e, n = _scene_bounds(grid)
                    tol = 0.5 * abs(grid.transform.a)
                    if x0 > w + tol or x1 < e - tol or y0 > s + tol or y1 < n - tol:
                        inside = max(0.0, min(x1, e) - max(x0, w)) * max(0.0, min(y1, n) - max(y0, s))
                        share = 100.0 * inside / max((e - w) * (n - s), 1e-9)
                        raise LayerError(
                            f"{what} {src_path} does not cover the scene (it covers {share:.0f}% of it); "
                            "pass a layer that contains the whole scene"
                        )
                if _same_grid(src, grid):
                    data = src.read(1, out_dtype="float32", masked=True).filled(np.nan)
                else:
                    with WarpedVRT(
                        src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                        resampling=getattr(Resampling, resampling), nodata=float("nan"), dtype="float32",
                    ) as vrt:  # fmt: skip
                        data = vrt.read(1)
                    if local:
                        messages.append(
                            f"warped {what} {Path(src_path).name} ({_grid_text(src.crs, src.transform)}) "
                            f"onto the scene grid ({_grid_text(grid.crs, grid.transform)}, {resampling})"
                        )
        except RasterioIOError as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise LayerError(f"{what}: cannot read {src_path.split('?', 1)[0]}: {first}") from None
        hole = np.isnan(out)
        out[hole] = data[hole]
    if not local:
        cover = float(np.isfinite(out).mean())
        if cover < COVER_FRACTION:
            raise LayerError(
                f"{what}: the STAC assets cover only {100 * cover:.1f}% of the scene; "
                "pass a local layer that covers it"
            )
        messages.append(f"{what}: {len(sources)} STAC asset(s) warped onto the scene grid ({resampling})")
    return out, messages


# --------------------------------------------------------------------------------------------------
# STAC: the same client as `fetch`
# --------------------------------------------------------------------------------------------------


def stac_assets(
    catalog: str, collection: str, asset: str, bbox: Sequence[float], required: bool = True
) -> list[Any]:
    """Items of `collection` over `bbox` that carry `asset` (any date); [] when not `required` and
    the catalog has none."""
    import datetime as dt

    from floodlora.data.fetch import FetchError, FetchOptions, search_items

    opts = FetchOptions(bbox=tuple(bbox), date=dt.date(2000, 1, 1), catalog=catalog, collection=collection)  # type: ignore[arg-type]
    start = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
    try:
        items = search_items(opts, start, end)
    except FetchError as err:
        if required or "no items of collection" not in str(err):
            raise
        return []
    items = [i for i in items if asset in i.assets]
    if not items and required:
        raise LayerError(
            f"no {collection!r} item with asset {asset!r} over bbox {','.join(f'{v:g}' for v in bbox)} "
            f"in {catalog}"
        )
    return items


def asset_hrefs(items: Sequence[Any], asset: str, sign: bool = False) -> list[str]:
    """Absolute hrefs of `asset` (signed for the Planetary Computer when `sign`)."""
    if sign:
        from floodlora.data.fetch import FetchOptions, _signer

        signer = _signer(FetchOptions(bbox=(0, 0, 1, 1), date=None, catalog="planetarycomputer"))  # type: ignore[arg-type]
        if signer is not None:
            items = [signer(i) for i in items]
    return [i.assets[asset].get_absolute_href() or i.assets[asset].href for i in items]


# --------------------------------------------------------------------------------------------------
# reference water
# --------------------------------------------------------------------------------------------------


def reference_water(
    sources: Sequence[str], grid: SceneGrid, threshold: float, local: bool = True
) -> tuple[np.ndarray, list[str]]:
    """Reference water (bool) on `grid`: occurrence >= `threshold` (JRC percent, or a 0/1 layer)."""
    if not 0 < threshold <= 100:
        raise ConfigError(f"--reference-threshold must be in (0, 100], got {threshold}")
    data, messages = read_on_grid(sources, grid, "reference water", "nearest", local)
    finite = data[np.isfinite(data)]
    if finite.size and float(finite.max()) <= 1.0 and threshold > 1.0:
        messages.append(
            f"reference water holds 0/1 values: water where it is 1 (threshold {threshold:g} unused)"
        )
        threshold = 1.0
    with np.errstate(invalid="ignore"):
        water = np.isfinite(data) & (data >= threshold)
    return water, messages


# --------------------------------------------------------------------------------------------------
# terrain
# --------------------------------------------------------------------------------------------------


def terrain_grid(grid: SceneGrid, resolution_m: float, margin_m: float = 0.0) -> SceneGrid:
    """A north-up grid in the scene's CRS (metres) over the scene plus `margin_m`, at `resolution_m`."""
    from rasterio.transform import from_origin

    if not grid.crs.is_projected:
        raise LayerError("terrain exclusions need a scene in a projected CRS (metres), e.g. UTM")
    w, s, e, n = _scene_bounds(grid)
    unit = float(grid.crs.linear_units_factor[1])
    r = resolution_m / unit
    m = margin_m / unit
    w, s, e, n = w - m, s - m, e + m, n + m
    width, height = max(1, math.ceil((e - w) / r)), max(1, math.ceil((n - s) / r))
    return SceneGrid(grid.crs, from_origin(w, n, r, r), width, height)


def hand_and_slope(
    dem: np.ndarray, transform: Any, crs: Any, drainage_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """HAND (metres) and slope (degrees, along the D8 flow direction) with pysheds.

    Depressions are filled and flats resolved first, so water finds a way out of every cell.
    """
    from unittest import mock

    import pyproj
    from pysheds.grid import Grid
    from pysheds.sview import Raster, ViewFinder

    vf = ViewFinder(affine=transform, shape=dem.shape, crs=pyproj.Proj(crs.to_wkt()), nodata=np.nan)
    raster = Raster(dem.astype(np.float64), viewfinder=vf)
    g = Grid(viewfinder=vf)
    # pysheds 0.5 still calls numpy.in1d, which numpy 2.4 removed; isin is its replacement
    with mock.patch.object(np, "in1d", np.isin, create=True):
        filled = g.resolve_flats(g.fill_depressions(g.fill_pits(raster)))
        fdir = g.flowdir(filled)
        acc = g.accumulation(fdir)
        channels = acc > drainage_cells
        if not np.asarray(channels).any():
            channels = acc >= np.asarray(acc).max()
        hand = np.asarray(g.compute_hand(fdir, filled, channels), dtype=np.float32)
        slope = np.asarray(g.cell_slopes(filled, fdir), dtype=np.float32)
    return hand, np.degrees(np.arctan(slope)).astype(np.float32)


def look_azimuth(orbit_state: str) -> float:
    """Horizontal look direction of Sentinel-1 (right-looking), degrees clockwise from north."""
    return (HEADING_DEG[orbit_state] + 90.0) % 360.0


def shadow_layover(
    dem: np.ndarray, pixel_m: float, incidence_deg: float, look_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Radar shadow and layover from the terrain's tilt along the range direction (local criterion).

    With the ground tilting by `a` towards the sensor: layover where `a` exceeds the incidence
    angle, shadow where the ground falls away from the sensor more steeply than 90° - incidence.
    Shade cast by distant relief is not traced.
    """
    dz_dn, dz_de = np.gradient(dem.astype(np.float64), pixel_m)
    dz_dn = -dz_dn  # rows run south
    phi = math.radians(look_deg)
    rise_away = dz_de * math.sin(phi) + dz_dn * math.cos(phi)  # ground rising along the look direction
    tilt = np.degrees(np.arctan(rise_away))  # > 0: facing the sensor
    return tilt < -(90.0 - incidence_deg), tilt > incidence_deg


def terrain_exclusions(
    sources: Sequence[str], grid: SceneGrid, opts: TerrainOptions, local: bool = True
) -> Exclusions:
    """HAND / slope / shadow / layover exclusions on `grid` from a DEM (computed on a metric grid).

    The DEM is resampled (bilinear) onto a grid of `opts.resolution_m` in the scene's CRS, the
    rules are evaluated there, and the excluded cells are put on the scene grid (nearest).
    """
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    tgrid = terrain_grid(grid, opts.resolution_m)
    dem, messages = read_on_grid(sources, tgrid, "DEM", "bilinear", local)
    holes = ~np.isfinite(dem)
    if holes.mean() > 1 - COVER_FRACTION:
        raise LayerError(
            f"DEM: {100 * holes.mean():.1f}% of the scene has no elevation; pass a DEM that covers it"
        )
    if holes.any():  # a few missing cells (edges, voids): nearest elevation
        from scipy import ndimage

        idx = ndimage.distance_transform_edt(holes, return_distances=False, return_indices=True)
        dem = dem[tuple(idx)]
    cell_area = opts.resolution_m**2
    rules: dict[str, np.ndarray] = {}
    if opts.hand_max_m is not None or opts.slope_max_deg is not None:
        hand, slope = hand_and_slope(
            dem, tgrid.transform, tgrid.crs, max(1, round(opts.drainage_km2 * 1e6 / cell_area))
        )
        if opts.hand_max_m is not None:
            rules["hand"] = hand > opts.hand_max_m
        if opts.slope_max_deg is not None:
            rules["slope"] = slope > opts.slope_max_deg
    if opts.shadow_layover:
        if opts.orbit_state is None:
            messages.append("shadow / layover not computed: the pass direction is unknown")
        else:
            incidence = opts.incidence_deg
            if incidence is None:
                incidence = DEFAULT_INCIDENCE_DEG
                messages.append(f"incidence angle unknown: shadow / layover at {incidence:g}° (IW mid-swath)")
            shadow, layover = shadow_layover(
                dem, opts.resolution_m, incidence, look_azimuth(opts.orbit_state)
            )
            rules["shadow"], rules["layover"] = shadow, layover
    excluded = np.zeros((grid.height, grid.width), dtype=bool)
    counts: dict[str, int] = {}
    for name, rule in rules.items():
        on_scene = np.zeros((grid.height, grid.width), dtype=np.uint8)
        reproject(
            rule.astype(np.uint8), on_scene, src_transform=tgrid.transform, src_crs=tgrid.crs,
            dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.nearest,
        )  # fmt: skip
        hit = on_scene > 0
        counts[name] = int(hit.sum())
        excluded |= hit
    return Exclusions(excluded, counts, messages)


def product_mask(sources: Sequence[str], grid: SceneGrid) -> tuple[np.ndarray, list[str]]:
    """A product's own shadow / layover mask asset (nonzero = shadow or layover) on `grid`."""
    data, messages = read_on_grid(sources, grid, "shadow/layover mask", "nearest", local=False)
    with np.errstate(invalid="ignore"):
        return np.isfinite(data) & (data > 0), messages
