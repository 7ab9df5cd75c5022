"""Sentinel-1 pre/post-event scenes for an area and a date, from a STAC API or a static STAC catalog.

A responder knows "this area, this flood date", not file names. :func:`fetch_scenes` searches the
catalog (pystac-client for an API, pystac for a static catalog on disk), picks

* post-event: the first acquisition on or after the date whose items (slices of one pass) together
  cover the bbox;
* pre-event: the latest acquisition at least ``min_gap_days`` earlier, within ``pre_days``, with
  the same relative orbit and pass direction (same geometry, so a change is a change on the ground);

and reads only the bbox of each asset (rasterio's ``WarpedVRT`` onto one UTM grid: GDAL fetches
the COG blocks that window needs, never the whole scene). Slices of one pass are mosaicked (the first
valid pixel wins). Outputs, each atomic: ``pre.tif`` and ``post.tif`` (float32 VV, VH in dB, NaN
nodata, the same grid) and ``fetch.json`` (items, datetimes, orbits, hrefs, bbox, CRS).

Default catalog: Microsoft Planetary Computer ``sentinel-1-rtc`` (RTC gamma0, linear power, 10 m),
whose asset URLs need signing by the optional ``planetary-computer`` package.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError, DataError

PLANETARY_COMPUTER = "https://planetarycomputer.microsoft.com/api/stac/v1"
DEFAULT_COLLECTION = "sentinel-1-rtc"
FETCH_JSON = "fetch.json"
_UNREACHABLE = (
    "Connection refused",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "timed out",
    "Max retries exceeded",
)
COVER_FRACTION = 0.999  # footprints are polygons in lon/lat; tolerate rounding at the bbox edge
# acquisition geometry kept per item for the terrain exclusions (floodlora.data.terrain)
INCIDENCE_KEYS = ("view:incidence_angle", "sar:incidence_angle", "s1:incidence_angle", "incidence_angle")
MASK_ASSETS = ("mask", "layover_shadow_mask", "ls_mask")  # a product's own shadow / layover mask


class FetchError(DataError):
    """Nothing usable found, the catalog unreachable, or an asset unreadable."""


@dataclass
class FetchOptions:
    """What to search and how to read it."""

    bbox: tuple[float, float, float, float]  # W, S, E, N in degrees (WGS 84)
    date: dt.date
    pre_days: int = 60  # look this far back for the pre-event acquisition
    post_days: int = 12  # look this far ahead for the post-event acquisition (one S1 repeat cycle)
    min_gap_days: int = 3  # pre-event acquisitions at least this much before the post-event one
    catalog: str = PLANETARY_COMPUTER
    collection: str = DEFAULT_COLLECTION
    assets: dict[str, str] = field(default_factory=lambda: {"vv": "vv", "vh": "vh"})
    asset_units: str = "linear"  # units of the assets: linear (power) or db
    resolution: float = 10.0  # metres, output grid
    crs: str | None = None  # None: the UTM zone of the bbox centre
    sign: str = "auto"  # auto (Planetary Computer URLs), planetary-computer, none
    progress: bool = False


@dataclass
class Acquisition:
    """One pass over the bbox: the items (slices) of one relative orbit on one day."""

    items: list[Any]
    datetime: dt.datetime
    relative_orbit: int | None
    orbit_state: str | None
    coverage: float = 0.0

    def describe(self) -> str:
        orbit = f"relative orbit {self.relative_orbit}, {self.orbit_state or 'unknown pass'}"
        return f"{self.datetime:%Y-%m-%d %H:%M}Z ({orbit}, {len(self.items)} item(s))"


@dataclass
class FetchResult:
    out_dir: Path
    pre: Path
    post: Path
    manifest: Path
    info: dict[str, Any]
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. catalog items that could not be used


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """'W,S,E,N' in degrees -> tuple, checked."""
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--bbox {text!r}: expected W,S,E,N in degrees, e.g. 15.10,45.20,15.20,45.30"
        ) from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(f"--bbox {text!r}: need -180 <= W < E <= 180 and -90 <= S < N <= 90")
    return w, s, e, n


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--date {text!r}: expected YYYY-MM-DD") from None


def utm_crs(lon: float, lat: float) -> str:
    """EPSG code of the WGS 84 UTM zone holding (lon, lat)."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


# --------------------------------------------------------------------------------------------------
# searching
# --------------------------------------------------------------------------------------------------


def _is_local(catalog: str) -> bool:
    return "://" not in catalog or catalog.startswith("file://")


def _signer(opts: FetchOptions) -> Callable[[Any], Any] | None:
    sign = opts.sign
    if sign == "auto":
        sign = "planetary-computer" if "planetarycomputer" in opts.catalog else "none"
    if sign == "none":
        return None
    if sign != "planetary-computer":
        raise ConfigError(f"sign: {opts.sign!r} is not one of auto, planetary-computer, none")
    try:
        import planetary_computer
    except ImportError:
        raise FetchError(
            "Planetary Computer assets need signed URLs: pip install 'floodlora[planetary-computer]'"
        ) from None
    return planetary_computer.sign_inplace


def _item_datetime(item: Any) -> dt.datetime:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise FetchError(f"item {item.id} has no datetime")
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def search_items(
    opts: FetchOptions, start: dt.datetime, end: dt.datetime, skipped: list[str] | None = None
) -> list[Any]:
    """Items of the collection intersecting the bbox between `start` and `end` (pystac Items).

    An item that cannot be used (unreadable, malformed, no datetime) is left out and described in
    `skipped`, so one bad entry of a catalog does not stop a responder; none usable is a FetchError.
    """
    import shapely.geometry

    skipped = [] if skipped is None else skipped
    area = shapely.geometry.box(*opts.bbox)
    items = _static_items(opts, skipped) if _is_local(opts.catalog) else _api_items(opts, start, end)
    out = []
    for item in items:
        try:
            when = _item_datetime(item)
        except FetchError:
            skipped.append(f"{item.id} (no datetime)")
            continue
        if not start <= when <= end or item.geometry is None:
            continue
        if shapely.geometry.shape(item.geometry).intersects(area):
            out.append(item)
    return sorted(out, key=_item_datetime)


def describe_skipped(skipped: Sequence[str], limit: int = 3) -> str:
    """'2 unusable STAC item(s) skipped: a (file not found), b (no datetime)', at most `limit` named."""
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} unusable STAC item(s) skipped: {', '.join(skipped[:limit])}{more}"


def _unreadable(err: BaseException) -> str:
    """Why a STAC file could not be read, in a few words (pystac wraps the cause)."""
    import json

    while err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, json.JSONDecodeError):
        return "not valid JSON"
    text = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
    if "datetime" in text.lower():
        return "no datetime"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _walk_items(container: Any, skipped: list[str], seen: set[str] | None = None) -> Iterator[Any]:
    """Every item under a static catalog or collection; what cannot be read goes to `skipped`.

    pystac resolves links lazily inside ``get_items()``, where one broken file ends the whole walk
    with a traceback; here each link is resolved on its own.
    """
    seen = set() if seen is None else seen
    root = container.get_root()
    for rel in ("child", "item"):
        links = container.get_child_links() if rel == "child" else container.get_item_links()
        for link in links:
            href = link.get_absolute_href() or link.href
            if href in seen:
                continue
            seen.add(href)
            try:
                target = link.resolve_stac_object(root=root).target
                if rel == "item":
                    _item_datetime(target)
            except Exception as err:  # pystac raises many types for a missing or malformed file
                skipped.append(f"{href} ({_unreadable(err)})")
                continue
            if rel == "child":
                yield from _walk_items(target, skipped, seen)
            else:
                yield target


def _static_items(opts: FetchOptions, skipped: list[str]) -> list[Any]:
    import pystac

    p = _catalog_path(opts.catalog)
    if p.is_dir():
        p = p / "catalog.json"
    if not p.is_file():
        raise FetchError(f"--catalog {opts.catalog}: no STAC catalog there (catalog.json not found)")
    try:
        root = pystac.read_file(str(p))
    except Exception as err:  # pystac raises several types for a malformed file
        raise FetchError(f"{p}: not a readable STAC catalog ({type(err).__name__}: {err})") from None
    if isinstance(root, pystac.Item):
        raise FetchError(f"{p}: a STAC item, not a catalog or collection")
    every = list(_walk_items(root, skipped))
    if isinstance(root, pystac.Collection) and root.id == opts.collection:
        items = every
    else:
        items = [i for i in every if i.collection_id == opts.collection]
    if not items:
        ids = sorted({str(i.collection_id) for i in every if i.collection_id})
        bad = f"; {describe_skipped(skipped)}" if skipped else ""
        raise FetchError(
            f"{p}: no items of collection {opts.collection!r} (collections: {', '.join(ids) or 'none'}){bad}"
        )
    return items


def _catalog_path(catalog: str) -> Path:
    return Path(catalog[len("file://") :] if catalog.startswith("file://") else catalog)


def catalog_location(catalog: str) -> str:
    """The catalog as fetch.json and summary.json record it: an absolute path, or the URL as given."""
    return str(_catalog_path(catalog).resolve()) if _is_local(catalog) else catalog


def _api_items(opts: FetchOptions, start: dt.datetime, end: dt.datetime) -> list[Any]:
    import pystac_client
    from pystac_client.exceptions import APIError

    try:
        client = pystac_client.Client.open(opts.catalog, modifier=_signer(opts), timeout=30)
        search = client.search(
            collections=[opts.collection],
            bbox=opts.bbox,
            datetime=f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}",
            max_items=500,
        )
        return list(search.items())
    except (APIError, OSError) as err:  # requests' ConnectionError is an OSError; pystac-client wraps some
        text = f"{type(err).__name__}: {err}"
        if isinstance(err, OSError) or any(m in text for m in _UNREACHABLE):
            reason = next((m for m in _UNREACHABLE if m in text), type(err).__name__)
            raise FetchError(
                f"cannot reach the STAC API at {opts.catalog} ({reason}); check the network, "
                "or pass --catalog PATH to a local STAC catalog"
            ) from None
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise FetchError(f"STAC API {opts.catalog} refused the search: {first}") from None


def group_acquisitions(items: Sequence[Any], bbox: Sequence[float]) -> list[Acquisition]:
    """Items -> passes (same day, relative orbit, pass direction), with the bbox fraction they cover."""
    import shapely
    import shapely.geometry

    area = shapely.geometry.box(*bbox)
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for item in items:
        p = item.properties
        key = (_item_datetime(item).date(), p.get("sat:relative_orbit"), p.get("sat:orbit_state"))
        groups.setdefault(key, []).append(item)
    out = []
    for (_, orbit, state), group in groups.items():
        union = shapely.union_all([shapely.geometry.shape(i.geometry) for i in group])
        coverage = float(union.intersection(area).area / area.area)
        when = min(_item_datetime(i) for i in group)
        out.append(Acquisition(sorted(group, key=_item_datetime), when, orbit, state, coverage))
    return sorted(out, key=lambda a: a.datetime)


def choose_pair(items: Sequence[Any], opts: FetchOptions) -> tuple[Acquisition, Acquisition]:
    """(pre, post) acquisitions, or a FetchError saying what was searched and what was found."""
    day0 = dt.datetime.combine(opts.date, dt.time(), tzinfo=dt.UTC)
    where = f"collection {opts.collection!r} in {opts.catalog}, bbox {','.join(f'{v:g}' for v in opts.bbox)}"
    acqs = group_acquisitions(items, opts.bbox)
    after = [a for a in acqs if a.datetime >= day0]
    if not after:
        end = day0 + dt.timedelta(days=opts.post_days)
        raise FetchError(f"no Sentinel-1 item found in {where} between {opts.date} and {end:%Y-%m-%d}")
    covering = [a for a in after if a.coverage >= COVER_FRACTION]
    if not covering:
        best = max(after, key=lambda a: a.coverage)
        raise FetchError(
            f"no acquisition on or after {opts.date} covers the whole bbox: the best, {best.describe()}, "
            f"covers {100 * best.coverage:.0f}% ({', '.join(i.id for i in best.items)}); "
            "use a smaller --bbox or a later --date"
        )
    post = covering[0]
    latest = post.datetime - dt.timedelta(days=opts.min_gap_days)
    earliest = post.datetime - dt.timedelta(days=opts.pre_days)
    same = [
        a
        for a in acqs
        if earliest <= a.datetime <= latest
        and a.relative_orbit == post.relative_orbit
        and a.orbit_state == post.orbit_state
    ]
    pre_cover = [a for a in same if a.coverage >= COVER_FRACTION]
    if not pre_cover:
        partial = f" ({len(same)} only partly cover the bbox)" if same else ""
        raise FetchError(
            f"no pre-event acquisition in {where} between {earliest:%Y-%m-%d} and {latest:%Y-%m-%d} with "
            f"relative orbit {post.relative_orbit}, {post.orbit_state} like the post-event one{partial}; "
            "try a larger --pre-days"
        )
    return pre_cover[-1], post


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


@dataclass
class OutputGrid:
    crs: str
    transform: Any
    width: int
    height: int


def output_grid(opts: FetchOptions) -> OutputGrid:
    """The bbox on a north-up grid of `resolution` metres, snapped to multiples of it."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    w, s, e, n = opts.bbox
    crs = opts.crs or utm_crs((w + e) / 2, (s + n) / 2)
    x0, y0, x1, y1 = transform_bounds("EPSG:4326", crs, w, s, e, n, densify_pts=21)
    r = opts.resolution
    x0, y0 = math.floor(x0 / r) * r, math.floor(y0 / r) * r
    x1, y1 = math.ceil(x1 / r) * r, math.ceil(y1 / r) * r
    return OutputGrid(crs, from_origin(x0, y1, r, r), round((x1 - x0) / r), round((y1 - y0) / r))


@contextmanager
def _gdal_env() -> Iterator[None]:
    import rasterio

    with rasterio.Env(
        GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MAX_RETRY="3", GDAL_HTTP_RETRY_DELAY="1"
    ):
        yield


def _strip_query(href: str) -> str:
    """An asset href without its query string (no signing tokens in fetch.json)."""
    return href.split("?", 1)[0]


def read_asset(href: str, grid: OutputGrid, linear: bool, item_id: str, asset: str) -> np.ndarray:
    """The bbox of one asset on `grid` (float32, NaN where the source is nodata or absent)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.vrt import WarpedVRT

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said below, in one line
            opened = rasterio.open(href)
        with opened as src:
            if src.crs is None:
                raise FetchError(
                    f"{item_id}/{asset}: {_strip_query(href)} is not georeferenced (no CRS); "
                    "it cannot be placed on the bbox"
                )
            src_nodata = src.nodata if src.nodata is not None else (0.0 if linear else None)
            with WarpedVRT(
                src,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=Resampling.bilinear,
                src_nodata=src_nodata,
                nodata=float("nan"),
                dtype="float32",
            ) as vrt:
                data = vrt.read(1)
    except RasterioIOError as err:
        msg = str(err)
        short = _strip_query(href)
        if any(code in msg for code in ("403", "401", "409", "AuthenticationFailed", "Signature")):
            raise FetchError(
                f"{item_id}/{asset}: the server refused {short} (unsigned or expired URL); for the Planetary "
                "Computer install planetary-computer (floodlora[planetary-computer]) and fetch again"
            ) from None
        first = msg.strip().splitlines()[0][:200] if msg.strip() else type(err).__name__
        raise FetchError(f"{item_id}/{asset}: cannot read {short}: {first}") from None
    data = data.astype(np.float32, copy=False)
    if linear:
        data[~(data > 0)] = np.nan
    return data


def item_incidence(properties: dict[str, Any]) -> float | None:
    """The item's incidence angle in degrees (the mean of near / far range when it gives both)."""
    value = next((properties[k] for k in INCIDENCE_KEYS if properties.get(k) is not None), None)
    if isinstance(value, (list, tuple)):
        value = sum(value) / len(value) if value else None
    return float(value) if value is not None else None


def _mask_href(item: Any) -> str | None:
    """The href of the item's own shadow / layover mask asset, if it has one."""
    key = next((k for k in MASK_ASSETS if k in item.assets), None)
    return None if key is None else item.assets[key].get_absolute_href() or item.assets[key].href


def mosaic(
    acq: Acquisition, opts: FetchOptions, grid: OutputGrid, advance: Callable[[str], None]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Bands [VV, VH] on `grid` in dB from every item of one pass; first valid pixel wins."""
    linear = opts.asset_units == "linear"
    out = np.full((2, grid.height, grid.width), np.nan, dtype=np.float32)
    described = []
    for item in acq.items:
        hrefs = {}
        for b, band in enumerate(("vv", "vh")):
            key = opts.assets[band]
            if key not in item.assets:
                raise FetchError(
                    f"item {item.id} has no asset {key!r} for {band.upper()} (assets: "
                    f"{', '.join(sorted(item.assets))}); set the asset names for this catalog"
                )
            href = item.assets[key].get_absolute_href() or item.assets[key].href
            advance(f"{item.id} {band.upper()}")
            data = read_asset(href, grid, linear, item.id, key)
            hole = np.isnan(out[b])
            out[b][hole] = data[hole]
            hrefs[band] = _strip_query(href)
        described.append(
            {
                "id": item.id,
                "href": _strip_query(item.get_self_href() or "") or None,
                "datetime": _item_datetime(item).isoformat(),
                "platform": item.properties.get("platform"),
                "relative_orbit": item.properties.get("sat:relative_orbit"),
                "orbit_state": item.properties.get("sat:orbit_state"),
                "incidence_angle": item_incidence(item.properties),
                "mask_href": _mask_href(item),
                "hrefs": hrefs,
            }
        )
    if linear:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (10.0 * np.log10(out)).astype(np.float32)
    return out, described


def write_scene(path: Path, data: np.ndarray, grid: OutputGrid, tags: dict[str, str]) -> None:
    """float32 VV/VH GeoTIFF (tiled, DEFLATE, NaN nodata, band descriptions), atomically."""
    import rasterio

    from floodlora.io import atomic_path

    profile = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": 2,
        "dtype": "float32",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": float("nan"),
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    if grid.width < 256 or grid.height < 256:
        profile.update(tiled=False, blockxsize=None, blockysize=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as ds:
        ds.write(data)
        ds.set_band_description(1, "VV")
        ds.set_band_description(2, "VH")
        ds.update_tags(**tags)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    if not enabled:
        yield lambda label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("reading", total=total)
        started = [False]

        def advance(label: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] = True
            progress.update(task, description=f"reading {label}")

        yield advance
        progress.update(task, completed=total)


def search_window(opts: FetchOptions) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) of the catalog search: `pre_days` before the date to `post_days` after it."""
    day0 = dt.datetime.combine(opts.date, dt.time(), tzinfo=dt.UTC)
    try:
        return day0 - dt.timedelta(days=opts.pre_days), day0 + dt.timedelta(days=opts.post_days, hours=24)
    except OverflowError:
        raise ConfigError(
            f"--date {opts.date} with --pre-days {opts.pre_days}: the search window ({opts.pre_days} days "
            f"before to {opts.post_days} days after) leaves the calendar (years 1 to 9999)"
        ) from None


def check_fetch_options(opts: FetchOptions) -> tuple[dt.datetime, dt.datetime]:
    """Every option checked before any network call or file write; returns the search window."""
    if opts.asset_units not in ("linear", "db"):
        raise ConfigError(f"asset units must be linear or db, got {opts.asset_units!r}")
    if opts.pre_days <= opts.min_gap_days:
        raise ConfigError(f"--pre-days must be more than {opts.min_gap_days}, got {opts.pre_days}")
    if not (math.isfinite(opts.resolution) and opts.resolution > 0):
        raise ConfigError(f"--resolution must be a positive number of metres, got {opts.resolution}")
    return search_window(opts)


def fetch_scenes(opts: FetchOptions, out_dir: str | Path) -> FetchResult:
    """Search, choose the pre/post pair, read the bbox of each asset, write pre.tif, post.tif, fetch.json."""
    from floodlora.io import atomic_write_json

    start, end = check_fetch_options(opts)
    skipped: list[str] = []
    items = search_items(opts, start, end, skipped)
    try:
        pre, post = choose_pair(items, opts)
    except FetchError as err:  # the unusable items may be the ones that were needed: say so
        if not skipped:
            raise
        raise FetchError(f"{err}; {describe_skipped(skipped)}") from None
    grid = output_grid(opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 2 * (len(pre.items) + len(post.items))
    info: dict[str, Any] = {
        "bbox": list(opts.bbox),
        "date": opts.date.isoformat(),
        "catalog": catalog_location(opts.catalog),
        "collection": opts.collection,
        "crs": grid.crs,
        "transform": list(grid.transform)[:6],
        "width": grid.width,
        "height": grid.height,
        "resolution_m": opts.resolution,
        "units": "db",
        "bands": ["VV", "VH"],
    }
    messages = []
    with _gdal_env(), _progress(opts.progress, total) as advance:
        for name, acq in (("post", post), ("pre", pre)):
            data, described = mosaic(acq, opts, grid, advance)
            valid = float(np.isfinite(data).all(axis=0).mean())
            if valid == 0.0:
                raise FetchError(
                    f"{name}-event {acq.describe()}: no valid pixels in the bbox (only nodata borders)"
                )
            if valid < 0.99:
                messages.append(f"{name}-event scene: {100 * (1 - valid):.1f}% of the bbox is nodata")
            tags = {"acquired": acq.datetime.isoformat(), "units": "db", "software": "floodlora fetch"}
            write_scene(out / f"{name}.tif", data, grid, tags)
            info[name] = {
                "file": f"{name}.tif",
                "datetime": acq.datetime.isoformat(),
                "relative_orbit": acq.relative_orbit,
                "orbit_state": acq.orbit_state,
                "valid_fraction": valid,
                "items": described,
            }
    atomic_write_json(out / FETCH_JSON, info)
    warnings = [describe_skipped(skipped)] if skipped else []
    return FetchResult(out, out / "pre.tif", out / "post.tif", out / FETCH_JSON, info, messages, warnings)


def format_fetch(result: FetchResult) -> str:
    """The summary `floodlora fetch` prints."""
    info = result.info
    lines = [f"warning: {m}" for m in result.warnings] + [f"note: {m}" for m in result.messages]
    for name in ("post", "pre"):
        d = info[name]
        ids = ", ".join(i["id"] for i in d["items"])
        lines.append(
            f"{name}: {d['datetime'][:16]}Z, relative orbit {d['relative_orbit']}, {d['orbit_state']}: {ids}"
        )
    lines.append(
        f"grid: {info['width']}x{info['height']} px at {info['resolution_m']:g} m, {info['crs']}; VV/VH in dB"
    )
    lines += [f"wrote {result.post}", f"wrote {result.pre}", f"wrote {result.manifest}"]
    return "\n".join(lines)


def run_fetch(
    bbox: str,
    date: str,
    out: str | Path,
    pre_days: int = 60,
    catalog: str = PLANETARY_COMPUTER,
    collection: str = DEFAULT_COLLECTION,
    assets: str = "vv,vh",
    asset_units: str = "linear",
    resolution: float = 10.0,
    progress: bool = True,
) -> FetchResult:
    """`floodlora fetch`: parse the CLI's strings into FetchOptions and fetch."""
    opts = fetch_options(bbox, date, pre_days, catalog, collection, assets, asset_units, resolution, progress)
    return fetch_scenes(opts, out)


def fetch_options(
    bbox: str,
    date: str,
    pre_days: int = 60,
    catalog: str = PLANETARY_COMPUTER,
    collection: str = DEFAULT_COLLECTION,
    assets: str = "vv,vh",
    asset_units: str = "linear",
    resolution: float = 10.0,
    progress: bool = True,
) -> FetchOptions:
    """The CLI's strings as checked FetchOptions: `map` calls this before it writes or fetches anything."""
    names = [a.strip() for a in assets.split(",")]
    if len(names) != 2 or not all(names):
        raise ConfigError(f"--assets {assets!r}: expected the VV and VH asset names, e.g. vv,vh")
    opts = FetchOptions(
        bbox=parse_bbox(bbox), date=parse_date(date), pre_days=pre_days, catalog=catalog,
        collection=collection, assets={"vv": names[0], "vh": names[1]}, asset_units=asset_units,
        resolution=resolution, progress=progress,
    )  # fmt: skip
    check_fetch_options(opts)
    return opts
