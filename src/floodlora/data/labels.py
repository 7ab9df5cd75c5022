"""Labels as responders make them: polygons drawn in QGIS -> labelled chips in the folder layout.

`floodlora labels --scene POST.tif --flood FLOOD.gpkg [--dry DRY.gpkg] [--aoi AOI.gpkg] --out DIR`

* Vector files are read with pyogrio (GeoPackage, GeoJSON, Shapefile, FlatGeobuf: whatever GDAL
  reads). Polygons in another CRS than the scene are reprojected onto it (and the result says so).
  ``FILE:LAYER`` reads one layer of a multi-layer file; a file with several layers and none named
  is refused with the list of its layers.
* The polygons are rasterised onto the scene grid (rasterio, pixel centres): everything starts as
  255 (nodata), the AOI becomes 0 (dry), dry polygons become 0, flood polygons become 1 (flood wins
  where a dry and a flood polygon overlap). Pixels where the scene has no data become 255.
* The scene is cut into `chip_size` tiles (edge tiles shifted inwards so every chip is full size);
  tiles with at least `min_labelled` labelled pixels are written as ``DIR/chips/<chip>/post.tif``
  + ``mask.tif`` (docs/data.md), ready for `floodlora adapt`.

User errors (one line each): a vector file that is unreadable, holds no polygons, lies outside the
scene, has no CRS where the scene has one, or has several layers and none named; a date that is not
ISO; a scene without georeferencing; no labelled chip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.data.sample import MASK_DRY, MASK_FLOOD, MASK_NODATA
from floodlora.encodings import check_date
from floodlora.errors import ConfigError, DataError

UNITS = ("db", "linear")
LABELS_FILE = "labels.json"


@dataclass
class Polygons:
    """One vector file's polygons on the scene grid."""

    path: Path
    geometries: list[Any]  # shapely geometries in the scene CRS
    total: int  # polygons in the file
    outside: int  # of those, how many do not touch the scene
    reprojected_from: str | None = None
    layer: str | None = None  # the layer read, when the file has several

    @property
    def name(self) -> str:
        """``FILE`` or ``FILE:LAYER``, as the user gave it."""
        return f"{self.path}:{self.layer}" if self.layer is not None else str(self.path)


@dataclass
class LabelsResult:
    out: Path
    chips: list[str]
    flood_pixels: int
    dry_pixels: int
    labelled_pixels_in_scene: int
    chip_size: int
    messages: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs is not None else None
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] if crs is not None else "none")


def split_layer(text: str | Path) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:LAYER`` -> (file, layer or None); a file whose own name holds ':' wins."""
    text = str(text)
    if Path(text).exists() or ":" not in text:
        return Path(text), None
    file, _, layer = text.rpartition(":")
    if file and layer and Path(file).exists():
        return Path(file), layer
    return Path(text), None


def read_polygons(
    path: str | Path,
    scene_crs: Any,
    scene_bounds: tuple[float, float, float, float],
    flag: str = "polygons",
) -> Polygons:
    """Polygons of a vector file (``FILE`` or ``FILE:LAYER``) in the scene CRS (reprojected when
    needed), checked against the scene.

    A file with several layers (a GeoPackage from `suggest` to which a flood layer was added) needs
    the layer named: reading the first one, as GDAL does, would label the wrong polygons.
    """
    import pyogrio
    import shapely
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    path, layer = split_layer(path)
    if not path.exists():
        raise DataError(f"{path}: vector file not found")
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as err:  # pyogrio raises DataSourceError / GDAL errors
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read polygons ({first})") from None
    if layer is None and len(layers) > 1:
        raise ConfigError(
            f"--{flag} {path}: holds {len(layers)} layers ({', '.join(layers)}); name one as "
            f"--{flag} {path}:LAYER"
        )
    if layer is not None and layer not in layers:
        raise ConfigError(f"--{flag} {path}:{layer}: no layer {layer!r} there (layers: {', '.join(layers)})")
    try:
        meta, _, wkb, _ = pyogrio.raw.read(path, layer=layer, read_geometry=True)
    except Exception as err:  # pyogrio raises DataSourceError / DataLayerError / GDAL errors
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read polygons ({first})") from None
    where = f"{path}:{layer}" if layer is not None else str(path)
    geoms = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] if wkb is not None else []
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        kinds = sorted({g.geom_type for g in geoms}) or ["nothing"]
        raise DataError(f"{where}: no polygons (found {', '.join(kinds)})")
    polys = [g if g.is_valid else shapely.make_valid(g) for g in polys]
    src_crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else None
    reprojected = None
    if src_crs is None:
        raise DataError(f"{where}: has no CRS; save it with one (the scene is {_crs_name(scene_crs)})")
    if src_crs != scene_crs:
        polys = [
            shapely.geometry.shape(transform_geom(src_crs, scene_crs, shapely.geometry.mapping(g)))
            for g in polys
        ]
        reprojected = _crs_name(src_crs)
    box = shapely.box(*scene_bounds)
    inside = [g for g in polys if g.intersects(box)]
    if not inside:
        xmin, ymin, xmax, ymax = shapely.GeometryCollection(polys).bounds
        sx0, sy0, sx1, sy1 = scene_bounds
        raise DataError(
            f"{where}: none of its {len(polys)} polygons overlaps the scene (polygons span "
            f"x {xmin:.0f}..{xmax:.0f}, y {ymin:.0f}..{ymax:.0f}; scene x {sx0:.0f}..{sx1:.0f}, "
            f"y {sy0:.0f}..{sy1:.0f} in {_crs_name(scene_crs)})"
        )
    return Polygons(path, inside, len(polys), len(polys) - len(inside), reprojected, layer)


def rasterize_labels(
    shape: tuple[int, int],
    transform: Any,
    flood: list[Any],
    dry: list[Any] | None = None,
    aoi: list[Any] | None = None,
) -> np.ndarray:
    """uint8 labels on the grid: 255 everywhere, 0 in the AOI and dry polygons, 1 in flood polygons."""
    from rasterio.features import rasterize

    label = np.full(shape, MASK_NODATA, dtype=np.uint8)
    for geoms, value in ((aoi, MASK_DRY), (dry, MASK_DRY), (flood, MASK_FLOOD)):
        if geoms:
            burnt = rasterize(
                geoms, out_shape=shape, transform=transform, fill=0, default_value=1, dtype="uint8"
            )
            label[burnt.astype(bool)] = value
    return label


def chip_windows(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    """(row, col, h, w) tiles covering the scene; edge tiles are shifted inwards to stay full size."""

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        out = list(range(0, n - size + 1, size))
        if out[-1] + size < n:
            out.append(n - size)
        return out

    return [(r, c, min(size, height), min(size, width)) for r in starts(height) for c in starts(width)]


def make_labels(
    scene: str | Path,
    flood: str | Path,
    out: str | Path,
    *,
    dry: str | Path | None = None,
    aoi: str | Path | None = None,
    chip_size: int = 256,
    min_labelled: float = 0.01,
    units: str = "db",
    view: str = "post",
    event: str | None = None,
    date: str | None = None,
) -> LabelsResult:
    """Rasterise the polygons onto `scene` and write the labelled chips under `out` (folder layout)."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from floodlora.data.sample import VIEWS, Sample, SampleMeta
    from floodlora.data.sources.folder import write_dataset_yaml, write_sample
    from floodlora.io import atomic_write_json

    scene, out = Path(scene), Path(out)
    check_date(date)
    if units not in UNITS:
        raise ConfigError(f"--units must be one of {', '.join(UNITS)}, got {units!r}")
    if view not in VIEWS:
        raise ConfigError(f"--view must be one of {', '.join(VIEWS)}, got {view!r}")
    if chip_size < 8 or chip_size % 8:
        raise ConfigError(f"--chip-size must be a multiple of 8 (>= 8), got {chip_size}")
    if not 0.0 < min_labelled <= 1.0:
        raise ConfigError(f"--min-labelled must be in (0, 1], got {min_labelled}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: already exists and is not empty; choose another --out")
    if not scene.is_file():
        raise DataError(f"{scene}: scene not found")
    messages: list[str] = []
    try:
        ds = rasterio.open(scene)
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"{scene}: not a readable raster ({str(err).splitlines()[0][:120]})") from None
    with ds:
        if ds.crs is None or ds.transform.is_identity:
            raise DataError(
                f"{scene}: not georeferenced (no CRS / transform); polygons cannot be placed on it"
            )
        bands, note = _scene_bands(ds, str(scene))
        if note:
            messages.append(note)
        layers: dict[str, Polygons] = {}
        for name, path in (("flood", flood), ("dry", dry), ("aoi", aoi)):
            if path is None:
                continue
            layers[name] = p = read_polygons(path, ds.crs, tuple(ds.bounds), flag=name)
            if p.reprojected_from:
                messages.append(
                    f"{p.name}: CRS {p.reprojected_from} differs from the scene's {_crs_name(ds.crs)}; "
                    "polygons reprojected onto the scene"
                )
            if p.outside:
                messages.append(f"{p.name}: {p.outside} of {p.total} polygons lie outside the scene; ignored")
        if "dry" not in layers and "aoi" not in layers:
            messages.append(
                "no --dry or --aoi: only flood pixels are labelled (the model learns no dry class)"
            )
        label = rasterize_labels(
            (ds.height, ds.width), ds.transform, layers["flood"].geometries,
            layers["dry"].geometries if "dry" in layers else None,
            layers["aoi"].geometries if "aoi" in layers else None,
        )  # fmt: skip
        label[~_valid(ds, bands)] = MASK_NODATA
        if not (label == MASK_FLOOD).any():
            raise DataError(f"{flood}: no flood pixel inside the scene's valid data (empty result)")
        chips: list[str] = []
        event = event or scene.stem
        for r, c, h, w in chip_windows(ds.height, ds.width, chip_size):
            lab = label[r : r + h, c : c + w]
            if (lab != MASK_NODATA).mean() < min_labelled:
                continue
            win = Window(c, r, w, h)
            data = ds.read([bands[b] for b in bands], window=win, masked=True).astype(np.float32)
            arrays = np.where(np.ma.getmaskarray(data), np.nan, np.ma.getdata(data)).astype(np.float32)
            chip_id = f"{scene.stem}-r{r:05d}-c{c:05d}"
            meta = SampleMeta(
                chip_id=chip_id, event=event, source="folder", units=units, crs=ds.crs.to_wkt(),
                transform=tuple(ds.transform @ Affine.translation(c, r))[:6], date=date,
            )  # fmt: skip
            sample = Sample(views={view: dict(zip(bands, arrays, strict=True))}, mask=lab.copy(), meta=meta)
            write_sample(sample, out / "chips" / chip_id, list(bands))
            chips.append(chip_id)
    if not chips:
        raise DataError(
            f"no {chip_size}-px chip has {100 * min_labelled:g}% labelled pixels; "
            "draw larger polygons, add --aoi, or lower --min-labelled / --chip-size"
        )
    write_dataset_yaml(out, units, [view], list(bands), event)
    result = LabelsResult(
        out, chips, int((label == MASK_FLOOD).sum()), int((label == MASK_DRY).sum()),
        int((label != MASK_NODATA).sum()), chip_size, messages,
    )  # fmt: skip
    atomic_write_json(out / LABELS_FILE, {
        **result.summary(), "scene": str(scene), "flood": str(flood),
        "dry": str(dry) if dry else None, "aoi": str(aoi) if aoi else None,
    })  # fmt: skip
    return result


def write_scene_chips(
    views: dict[str, str | Path],
    out: str | Path,
    *,
    chip_size: int = 256,
    units: str = "db",
    event: str | None = None,
    date: str | None = None,
    windows: dict[str, tuple[int, int, int, int]] | None = None,
) -> Path:
    """Cut co-registered scenes (view -> GeoTIFF) into unlabelled chips in the folder layout under `out`.

    Chips mostly nodata (< 1 % valid) are skipped. Returns `out`, a dataset root for `discover`;
    `windows` (when given) receives each chip's id -> (row, col, height, width) in the scene.
    Why: self-adaptation learns from a scene the way it learns from chips, tile by tile.
    """
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from floodlora.data.sample import VIEWS, Sample, SampleMeta
    from floodlora.data.sources.folder import write_dataset_yaml, write_sample

    out = Path(out)
    if "post" not in views and not any(v.startswith("post") for v in views):
        raise ConfigError("self-adaptation needs a post-event scene (--view post=POST.tif)")
    opened: dict[str, Any] = {}
    try:
        for view, path in views.items():
            if view not in VIEWS:
                raise ConfigError(f"--view {view}: unknown view; expected one of {', '.join(VIEWS)}")
            if not Path(path).is_file():
                raise DataError(f"{path}: scene not found")
            try:
                opened[view] = rasterio.open(path)
            except rasterio.errors.RasterioIOError as err:
                raise DataError(f"{path}: not a readable raster ({str(err).splitlines()[0][:120]})") from None
        first = next(iter(opened.values()))
        for view, ds in opened.items():
            if (ds.height, ds.width) != (first.height, first.width):
                raise DataError(
                    f"{views[view]}: {ds.width}x{ds.height} px, but {views[next(iter(views))]} is "
                    f"{first.width}x{first.height} px; the views must share one grid"
                )
        names = {v: _scene_bands(ds, str(views[v]))[0] for v, ds in opened.items()}
        bands = sorted(set.intersection(*(set(b) for b in names.values())), key=["vv", "vh"].index)
        if not bands:
            raise DataError(f"{', '.join(map(str, views.values()))}: the views share no vv/vh band")
        event = event or Path(str(views.get("post", next(iter(views.values()))))).stem
        n = 0
        for r, c, h, w in chip_windows(first.height, first.width, chip_size):
            win = Window(c, r, w, h)
            arrays: dict[str, dict[str, np.ndarray]] = {}
            for view, ds in opened.items():
                data = ds.read([names[view][b] for b in bands], window=win, masked=True).astype(np.float32)
                stack = np.where(np.ma.getmaskarray(data), np.nan, np.ma.getdata(data)).astype(np.float32)
                arrays[view] = dict(zip(bands, stack, strict=True))
            valid = np.all([np.isfinite(a) for b in arrays.values() for a in b.values()], axis=0)
            if valid.mean() < 0.01:
                continue
            chip_id = f"{event}-r{r:05d}-c{c:05d}"
            crs = first.crs.to_wkt() if first.crs else None
            transform = tuple(first.transform @ Affine.translation(c, r))[:6] if first.crs else None
            meta = SampleMeta(chip_id=chip_id, event=event, source="folder", units=units, crs=crs,
                              transform=transform, date=date)  # fmt: skip
            write_sample(Sample(views=arrays, mask=None, meta=meta), out / "chips" / chip_id, bands)
            if windows is not None:
                windows[chip_id] = (r, c, h, w)
            n += 1
    finally:
        for ds in opened.values():
            ds.close()
    if n == 0:
        raise DataError(f"{', '.join(map(str, views.values()))}: no valid pixels (all nodata)")
    write_dataset_yaml(out, units, list(views), bands, event)
    return out


def _scene_bands(ds: Any, path: str) -> tuple[dict[str, int], str | None]:
    """Band name -> 1-based index: VV/VH from the band descriptions, else band 1 VV, band 2 VH."""
    named: dict[str, int] = {}
    for i, d in enumerate(ds.descriptions, start=1):
        d = (d or "").lower()
        if ("vv" in d) != ("vh" in d):
            named.setdefault("vv" if "vv" in d else "vh", i)
    if named:
        return {b: named[b] for b in ("vv", "vh") if b in named}, None
    note = None
    if ds.count > 2:
        note = f"{path}: {ds.count} bands without VV/VH descriptions; using band 1 as VV and band 2 as VH"
    return ({"vv": 1, "vh": 2} if ds.count >= 2 else {"vv": 1}), note


def _valid(ds: Any, bands: dict[str, int]) -> np.ndarray:
    """Pixels with data in every band read (nodata and NaN are not)."""
    valid = np.ones((ds.height, ds.width), dtype=bool)
    for idx in bands.values():
        data = ds.read(idx, masked=True)
        valid &= ~np.ma.getmaskarray(data) & np.isfinite(np.ma.getdata(data))
    return valid


def format_labels(result: LabelsResult) -> str:
    lines = [f"warning: {m}" for m in result.messages]
    lines.append(
        f"{len(result.chips)} chips of {result.chip_size} px written to {result.out} "
        f"({result.flood_pixels:,} flood and {result.dry_pixels:,} dry pixels labelled)"
    )
    lines.append(f"next: floodlora adapt FROM --data {result.out} --out RUN")
    return "\n".join(lines)
