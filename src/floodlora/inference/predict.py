"""Whole-scene prediction: Sentinel-1 GeoTIFF views in, georeferenced flood mask (+ layers) out.

The scene is never loaded whole. Tiles are read through rasterio windows, normalised with the run's
preset (floodlora.data.sar), predicted in batches, blended into a strip buffer
(floodlora.inference.tiling) and written row strip by row strip into tiled, compressed GeoTIFFs,
turned into COGs at the end. Every output is written to a temporary file and renamed into place only
when everything succeeded.

View input lives in floodlora.inference.views, TTA / MC-dropout uncertainty in
floodlora.inference.uncertainty; this module holds the options, the scene loop and the outputs.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from floodlora.data.sample import MASK_NODATA
from floodlora.data.terrain import SceneGrid
from floodlora.encodings import check_date, encode_latlon, encode_time
from floodlora.errors import ConfigError, DataError
from floodlora.inference.classes import (
    CLASS_COLORS,
    CLASSES_DESCRIPTION,
    CONFIDENCE_DESCRIPTION,
    ClassOptions,
    SceneClasses,
    Strip,
    otsu_level,
    pre_water_probability,
    resolve_pre_water,
    to_db,
)
from floodlora.inference.tiling import StripBlender, Tile, plan_tiles
from floodlora.inference.uncertainty import (
    predict_probabilities,
)
from floodlora.inference.views import (
    UNITS,
    Grid,
    OpenViews,
    input_warnings,
    open_views,
    scene_statistics,
)
from floodlora.precision import autocast, resolve_precision


@dataclass
class PredictOptions:
    """How a scene is tiled, predicted and written; None sizes come from the run."""

    tile: int | None = None  # None: the run's training crop size
    overlap: int | None = None  # None: tile // 4
    batch_size: int = 4
    threshold: float | None = None  # None: the run's threshold, chosen on val (0.5 for a bare model)
    tta: bool = False  # average over the 4 flips
    mc_samples: int = 0  # > 0: LoRA-dropout samples (uncertainty from the model's own dropout)
    units: str = "db"
    align: bool = True
    cog: bool = True
    date: str | None = None  # post-event acquisition date (ISO) for Clay's time encoding
    dates: dict[str, str] = field(default_factory=dict)  # view -> its own acquisition date (wins over date)
    seed: int = 0
    progress: bool = False
    simplify_m: float | None = None  # polygon simplification tolerance in metres
    min_area_m2: float | None = None  # drop flood polygons smaller than this
    precision: str = "auto"  # auto | 32 | bf16: autocast of the forward passes (floodlora.precision)
    target: str | None = None  # flood | water for a model with both outputs; None: flood with a pre view
    classes: ClassOptions | None = None  # class raster, confidence, reference water, exclusions, pre water


@dataclass
class PredictResult:
    """What was written and what happened on the way (the CLI prints this)."""

    out: Path
    probabilities: Path | None
    uncertainty: Path | None
    polygons: Path | None
    height: int
    width: int
    crs: str | None
    transform: tuple[float, ...]
    tile: int
    overlap: int
    tiles: int
    flooded_pixels: int
    valid_pixels: int
    flooded_km2: float | None
    polygon_count: int | None = None
    polygon_km2: float | None = None
    missing_views: list[str] = field(default_factory=list)
    aligned_views: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the result is probably wrong: say why
    timings: dict[str, float] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)  # the choice and its reason
    classes: dict[str, Any] | None = None  # SceneClasses.summary() when the class step ran


# --------------------------------------------------------------------------------------------------
# normalisation and metadata (reusing the data package)
# --------------------------------------------------------------------------------------------------


def normalise_tile(
    arrays: Mapping[str, Mapping[str, np.ndarray]], bands: Sequence[str], units: str, preset: Any
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per view `[C, t, t]` normalised float32 (nodata -> 0, the band mean) and the valid map.

    Linear power <= 0 is nodata, as everywhere in floodlora.data.
    """
    from floodlora.data.sample import Sample, SampleMeta
    from floodlora.data.sar import normalize_sample

    views: dict[str, dict[str, np.ndarray]] = {}
    for view, per_band in arrays.items():
        views[view] = {}
        for b in bands:
            if b not in per_band:
                continue
            a = per_band[b]
            if units == "linear":
                a = np.where(a > 0, a, np.nan).astype(np.float32)
            views[view][b] = a
    meta = SampleMeta(chip_id="tile", event="predict", source="scene", units=units)
    sample = Sample(views=views, mask=None, meta=meta)
    return normalize_sample(sample, bands, preset), sample.valid


def encode_date(date: str | None) -> np.ndarray:
    """Clay's time code of the `--date` value (:func:`floodlora.encodings.encode_time`); zeros if none.

    Unlike training chips, whose unparseable dates code as zeros, a user's bad `--date` is an error.
    """
    check_date(date)
    return encode_time(date)


def check_predict_options(opts: PredictOptions) -> None:
    """The options' own checks (no run or scene needed), so that `map` can make them before it fetches.

    NaN passes every comparison, so each number is checked to be finite first.
    """
    if opts.units not in UNITS:
        raise ConfigError(f"--units must be one of {', '.join(UNITS)}, got {opts.units!r}")
    if opts.threshold is not None and not (math.isfinite(opts.threshold) and 0.0 < opts.threshold < 1.0):
        raise ConfigError(f"--threshold must be in (0, 1), got {opts.threshold}")
    if opts.batch_size < 1 or opts.mc_samples < 0:
        raise ConfigError("batch size must be >= 1 and mc samples >= 0")
    polygon_options = (("--simplify", opts.simplify_m, "metres"), ("--min-area", opts.min_area_m2, "m2"))
    for flag, value, unit in polygon_options:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} must be >= 0 {unit}, got {value}")


def view_date(view: str, opts: PredictOptions) -> str | None:
    """The date of `view`: `--date VIEW=...`, else the bare (post-event) `--date` for post views.

    A pre-event view never borrows the post-event date (as in training, floodlora.data.sample).
    """
    own = opts.dates.get(view)
    if own:
        return own
    return opts.date if view.startswith("post") else None


def tile_latlon(grid: Grid, tiles: Sequence[Tile]) -> np.ndarray:
    """Clay's location encoding of each tile's centre `[N, 4]` (zeros without a CRS), as training
    encodes each chip's centre."""
    if grid.crs is None:
        return np.zeros((len(tiles), 4), dtype=np.float32)
    from rasterio.warp import transform

    t = grid.transform
    xs = [t.c + t.a * (tl.col + tl.size / 2) + t.b * (tl.row + tl.size / 2) for tl in tiles]
    ys = [t.f + t.d * (tl.col + tl.size / 2) + t.e * (tl.row + tl.size / 2) for tl in tiles]
    if grid.crs.is_geographic:
        lons, lats = xs, ys
    else:
        lons, lats = transform(grid.crs, "EPSG:4326", xs, ys)
    return np.stack([encode_latlon(la, lo) for la, lo in zip(lats, lons, strict=True)]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

MASK_COLORS = {0: (255, 255, 255, 0), 1: (0, 92, 230, 255), MASK_NODATA: (0, 0, 0, 0)}


def _profile(grid: Grid, dtype: str, nodata: float, block: int = 256) -> dict[str, Any]:
    prof: dict[str, Any] = {
        "driver": "GTiff",
        "height": grid.height,
        "width": grid.width,
        "count": 1,
        "dtype": dtype,
        "nodata": nodata,
        "compress": "deflate",
        "transform": grid.transform,
        "BIGTIFF": "IF_SAFER",
    }
    if grid.crs is not None:
        prof["crs"] = grid.crs
    if grid.height >= block and grid.width >= block:
        prof.update(tiled=True, blockxsize=block, blockysize=block)
    return prof


class _Layer:
    """One output raster written strip by strip into a temporary GeoTIFF."""

    def __init__(
        self,
        stack: ExitStack,
        target: Path,
        grid: Grid,
        dtype: str,
        nodata: float,
        desc: str,
        cog: bool,
        resampling: str,
        tags: dict[str, str],
        colors: Mapping[int, tuple[int, int, int, int]] | None = None,  # None: the mask's; {}: none
    ) -> None:
        import rasterio
        import rasterio.errors

        from floodlora.io import atomic_path, scratch_file

        self.target = target
        self.final_tmp = stack.enter_context(atomic_path(target))  # renamed over target on success
        self.cog = cog
        self.resampling = resampling
        self.work = self.final_tmp
        if cog:  # strips go to a scratch file beside the target; the COG is copied from it at the end
            self.work = scratch_file(target, ".strips.tif")
            stack.callback(self.work.unlink, missing_ok=True)
        with warnings.catch_warnings():  # a scene without georeferencing stays without it
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self.ds = rasterio.open(self.work, "w", **_profile(grid, dtype, nodata))
        self.ds.set_band_description(1, desc)
        self.ds.update_tags(**tags)
        colors = MASK_COLORS if colors is None else colors
        if dtype == "uint8" and colors:
            self.ds.write_colormap(1, colors)

    def write(self, row: int, data: np.ndarray) -> None:
        from rasterio.windows import Window

        self.ds.write(data[None], window=Window(0, row, data.shape[1], data.shape[0]))

    def finish(self) -> None:
        """Close the strips file and, for COG output, rewrite it as a Cloud Optimized GeoTIFF."""
        self.ds.close()
        if self.cog:
            from rasterio.shutil import copy as gdal_copy

            gdal_copy(
                self.work,
                self.final_tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE="512",
                OVERVIEW_RESAMPLING=self.resampling,
                BIGTIFF="IF_SAFER",
            )

    def abort(self) -> None:
        if not self.ds.closed:
            self.ds.close()


# --------------------------------------------------------------------------------------------------
# the scene loop
# --------------------------------------------------------------------------------------------------


def _batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    for i in range(0, len(tiles), size):
        yield tiles[i : i + size]


def _pixel_area_km2(grid: Grid) -> Callable[[int], float] | None:
    """Area of one pixel of scene row `r` in km2 (projected: constant; geographic: spherical band)."""
    if grid.crs is None:
        return None
    t = grid.transform
    if grid.crs.is_projected:
        _, factor = grid.crs.linear_units_factor
        area = abs(t.a * t.e - t.b * t.d) * float(factor) ** 2 / 1e6
        return lambda r: area
    r_km = 6371.0072
    dlon = math.radians(abs(t.a))

    def geographic(r: int) -> float:
        lat0 = math.radians(t.f + t.e * r)
        lat1 = math.radians(t.f + t.e * (r + 1))
        return r_km**2 * dlon * abs(math.sin(lat0) - math.sin(lat1))

    return geographic


def predict_scene(
    model: torch.nn.Module,
    views: Mapping[str, str | Path],
    out: str | Path,
    *,
    preset: Any,
    probabilities: str | Path | None = None,
    uncertainty: str | Path | None = None,
    polygons: str | Path | None = None,
    options: PredictOptions | None = None,
    tags: Mapping[str, str] | None = None,
) -> PredictResult:
    """Predict a flood map for a whole scene and write it (plus optional layers) atomically.

    `model` is a FloodSegmentor (views, bands, patch_size); `views` maps view names to GeoTIFFs;
    `preset` is the run's normalisation (floodlora.data.sar.NormalizationPreset).
    """
    from floodlora.inference.vector import vector_format

    opts = options or PredictOptions()
    if opts.threshold is None:
        opts.threshold = 0.5
    check_predict_options(opts)
    out = Path(out)
    cls = opts.classes
    extra = (cls.classes_path, cls.confidence_path) if cls is not None else ()
    outputs = [Path(p) for p in (out, probabilities, uncertainty, polygons, *extra) if p is not None]
    inputs = {Path(p).resolve() for p in views.values()}
    clash = [str(p) for p in outputs if p.resolve() in inputs]
    if clash:
        raise ConfigError(f"output {clash[0]} would overwrite an input view")
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise ConfigError("two outputs have the same path")
    if polygons is not None:
        vector_format(polygons)
    device = next((p.device.type for p in model.parameters()), "cpu")
    precision = resolve_precision(opts.precision, device, purpose="predict")
    messages: list[str] = []
    if precision.precision != "32-true":
        messages.append(f"precision {precision.precision} ({precision.requested}: {precision.reason})")
    tta = opts.tta
    if uncertainty is not None and not tta and opts.mc_samples == 0:
        tta = True
        messages.append("uncertainty layer requested: using the spread over 4 flips (TTA)")
    if cls is not None and cls.confidence_spread and not tta and opts.mc_samples == 0:
        tta = True
        messages.append("confidence from the spread over 4 flips: TTA on")

    t_start = time.perf_counter()
    model_views = list(getattr(model, "views", views.keys()))
    was_training = model.training
    model.eval()
    try:
        with open_views(views, model_views, opts.align) as opened, autocast(device, precision):
            result = _run_scene(
                model, opened, out, preset, probabilities, uncertainty, polygons, opts, tta, tags
            )
    finally:
        model.train(was_training)
    result.messages = messages + result.messages
    result.precision = precision.to_dict()
    result.timings["total"] = time.perf_counter() - t_start
    return result


def _run_scene(
    model: torch.nn.Module,
    opened: OpenViews,
    out: Path,
    preset: Any,
    probabilities: str | Path | None,
    uncertainty: str | Path | None,
    polygons: str | Path | None,
    opts: PredictOptions,
    tta: bool,
    tags: Mapping[str, str] | None,
) -> PredictResult:
    """The tile loop of :func:`predict_scene` on opened, aligned views."""
    from floodlora.inference.vector import write_polygons

    grid, readers = opened.grid, opened.readers
    messages = list(opened.messages)
    timings = dict.fromkeys(("read", "model", "blend", "write", "finalize", "polygons"), 0.0)
    model_views = list(getattr(model, "views", readers.keys()))
    bands = list(getattr(model, "bands", ("vv", "vh")))
    patch = int(getattr(model, "patch_size", 8))
    for name, reader in readers.items():
        absent = [b for b in bands if b not in reader.bands]
        if absent:
            messages.append(
                f"view {name}: band(s) {', '.join(absent)} not in {reader.path.name}; using the band mean"
            )
    from floodlora.data.sar import PER_SCENE

    if isinstance(preset, str) and preset == PER_SCENE:
        preset = scene_statistics(readers, bands, opts.units)
        spread = ", ".join(f"{b} {preset.mean[b]:.3g} ± {preset.std[b]:.3g}" for b in preset.mean)
        messages.append(f"per-scene normalisation from this scene's pixels: {spread} ({preset.units})")
    missing = [v for v in model_views if v not in readers]
    if missing:
        messages.append(f"view(s) {', '.join(missing)} not given: predicting from {', '.join(readers)} only")
    warns = input_warnings(readers, model_views, opts.units)
    if polygons is not None and grid.crs is None:
        raise DataError(
            f"{readers[grid.reference].path}: the scene has no CRS, so flood polygons cannot be written"
        )
    tile = opts.tile or 512
    overlap = opts.overlap if opts.overlap is not None else tile // 4
    try:
        plan = plan_tiles(grid.height, grid.width, tile, overlap, patch)
    except ValueError as err:
        raise ConfigError(f"tiling: {err}") from None
    unknown = sorted(set(opts.dates) - set(model_views))
    if unknown:
        raise ConfigError(
            f"--date for view(s) {', '.join(unknown)}: not views of this model ({', '.join(model_views)})"
        )
    time_codes = {v: torch.from_numpy(encode_date(view_date(v, opts))) for v in readers}
    want_unc = uncertainty is not None
    pixel_area = _pixel_area_km2(grid)
    cls_opts = opts.classes
    pw = resolve_pre_water(cls_opts, model, list(readers), opts.target or getattr(model, "target", None))
    if pw.mode == "otsu":
        assert pw.pre_view is not None
        pre_bands = readers[pw.pre_view].overview()
        pw.level_db = otsu_level(to_db(pre_bands.get("vv", next(iter(pre_bands.values()))), opts.units))
    if pw.message:
        messages.append(pw.message + (f" (level {pw.level_db:.2f} dB)" if pw.mode == "otsu" else ""))
    scene_cls = None
    if pw.mode != "off" or (cls_opts is not None and cls_opts.active) or opts.min_area_m2:
        scene_grid = SceneGrid(grid.crs, grid.transform, grid.width, grid.height)
        scene_cls = SceneClasses(cls_opts, scene_grid, opts.threshold, opts.min_area_m2, pixel_area)
        messages += scene_cls.messages
    want_spread = want_unc or bool(cls_opts is not None and cls_opts.confidence_spread)
    i_pre = 2 + int(want_spread) if pw.mode != "off" else None
    channels = 2 + int(want_spread) + int(pw.mode != "off")  # probability, valid, [spread], [pre water]
    blender = StripBlender(plan, channels)
    counts = {"flood": 0, "valid": 0, "km2": 0.0}
    base_tags = {"software": "floodlora", "threshold": str(opts.threshold), **(tags or {})}

    with ExitStack() as outs, _progress(opts.progress, len(plan)) as advance:
        mask_layer = _Layer(
            outs,
            out,
            grid,
            "uint8",
            MASK_NODATA,
            "flood (0 dry, 1 flood, 255 nodata)",
            opts.cog,
            "NEAREST",
            base_tags,
        )
        layers = [mask_layer]
        prob_layer = unc_layer = None
        if probabilities is not None:
            prob_layer = _Layer(
                outs,
                Path(probabilities),
                grid,
                "float32",
                float("nan"),
                "flood probability",
                opts.cog,
                "AVERAGE",
                base_tags,
            )
            layers.append(prob_layer)
        if uncertainty is not None:
            method = (
                f"std over {opts.mc_samples} LoRA-dropout samples" if opts.mc_samples else "std over 4 flips"
            )
            unc_layer = _Layer(
                outs,
                Path(uncertainty),
                grid,
                "float32",
                float("nan"),
                f"flood probability spread ({method})",
                opts.cog,
                "AVERAGE",
                base_tags,
            )
            layers.append(unc_layer)
        cls_layer = conf_layer = None
        if cls_opts is not None and cls_opts.classes_path is not None:
            cls_layer = _Layer(outs, Path(cls_opts.classes_path), grid, "uint8", MASK_NODATA,
                               CLASSES_DESCRIPTION, opts.cog, "NEAREST", base_tags, CLASS_COLORS)  # fmt: skip
            layers.append(cls_layer)
        if cls_opts is not None and cls_opts.confidence_path is not None:
            conf_layer = _Layer(outs, Path(cls_opts.confidence_path), grid, "uint8", MASK_NODATA,
                                CONFIDENCE_DESCRIPTION, opts.cog, "NEAREST", base_tags, {})  # fmt: skip
            layers.append(conf_layer)
        outs.callback(lambda: [layer.abort() for layer in layers])

        def write_strips(strips: list[Strip]) -> None:
            for st in strips:
                mask_layer.write(st.row, st.mask)
                if cls_layer is not None:
                    cls_layer.write(st.row, st.classes)
                if conf_layer is not None and st.confidence is not None:
                    conf_layer.write(st.row, st.confidence)

        def flush(released: tuple[int, np.ndarray] | None) -> None:
            if released is None:
                return
            t0 = time.perf_counter()
            row, data = released
            valid = data[1] > 0.5
            prob = data[0]
            flood = prob >= opts.threshold
            if scene_cls is not None:
                spread = data[2] if want_spread else None
                write_strips(
                    scene_cls.strip(row, prob, valid, None if i_pre is None else data[i_pre], spread)
                )
            else:
                mask_layer.write(row, np.where(valid, flood, MASK_NODATA).astype(np.uint8))
            if prob_layer is not None:
                prob_layer.write(row, np.where(valid, prob, np.nan).astype(np.float32))
            if unc_layer is not None:
                unc_layer.write(row, np.where(valid, data[2], np.nan).astype(np.float32))
            n_flood_rows = (flood & valid).sum(axis=1)
            counts["flood"] += int(n_flood_rows.sum())
            counts["valid"] += int(valid.sum())
            if pixel_area is not None:
                counts["km2"] += float(sum(int(n) * pixel_area(row + i) for i, n in enumerate(n_flood_rows)))
            timings["write"] += time.perf_counter() - t0

        with torch.random.fork_rng(devices=[]), torch.inference_mode(), warnings.catch_warnings():
            torch.manual_seed(opts.seed)
            warnings.simplefilter("ignore", UserWarning)  # missing views are reported once, above
            for band_index, band in enumerate(plan.bands()):
                if band_index:
                    flush(blender.release(band[0].row))
                for batch in _batches(band, opts.batch_size):
                    t0 = time.perf_counter()
                    per_view: dict[str, list[np.ndarray]] = {v: [] for v in readers}
                    valids = []
                    pre_water: list[np.ndarray] = []
                    for tl in batch:
                        raw = {v: r.read(tl) for v, r in readers.items()}
                        normed, valid = normalise_tile(raw, bands, opts.units, preset)
                        for v in readers:
                            per_view[v].append(normed[v])
                        valids.append(valid)
                        if pw.mode == "otsu":
                            assert pw.pre_view is not None and pw.level_db is not None
                            pre_raw = raw[pw.pre_view]
                            pre_db = to_db(pre_raw.get("vv", next(iter(pre_raw.values()))), opts.units)
                            pre_water.append(np.nan_to_num(pre_db, nan=np.inf) < pw.level_db)
                    x = {v: torch.from_numpy(np.stack(a)) for v, a in per_view.items()}
                    latlon = torch.from_numpy(tile_latlon(grid, batch))
                    tvec = {v: code.expand(len(batch), -1) for v, code in time_codes.items()}
                    t1 = time.perf_counter()
                    prob, spread = predict_probabilities(model, x, tvec, latlon, tta, opts.mc_samples)
                    if pw.mode in ("pair", "water"):
                        pre_p = pre_water_probability(model, x, tvec, latlon, pw, tta)[:, 0].numpy()
                        pre_water = [pre_p[i] for i in range(len(batch))]
                    t2 = time.perf_counter()
                    prob_np = prob[:, 0].numpy()
                    spread_np = spread[:, 0].numpy() if spread is not None else None
                    for i, tl in enumerate(batch):
                        layers_i = [prob_np[i], valids[i].astype(np.float32)]
                        if want_spread:
                            layers_i.append(
                                spread_np[i] if spread_np is not None else np.zeros_like(prob_np[i])
                            )
                        if i_pre is not None:
                            layers_i.append(pre_water[i].astype(np.float32))
                        blender.add(tl, np.stack(layers_i))
                    t3 = time.perf_counter()
                    timings["read"] += t1 - t0
                    timings["model"] += t2 - t1
                    timings["blend"] += t3 - t2
                    advance(len(batch))
            flush(blender.release(plan.height))
        if scene_cls is not None:
            write_strips(list(scene_cls.finish()))
            cls_summary = scene_cls.summary()
            counts["flood"] = cls_summary["classes_pixels"]["flood"]
            counts["km2"] = (cls_summary["classes_km2"] or {}).get("flood", 0.0)
            if scene_cls.removed_regions:
                messages.append(
                    f"{scene_cls.removed_regions} polygon(s) below the minimum area removed from the mask "
                    f"({scene_cls.min_pixels} px)"
                )
        t0 = time.perf_counter()
        for layer in layers:
            layer.finish()
        timings["finalize"] = time.perf_counter() - t0
        poly_summary = None
        if polygons is not None:
            from floodlora.inference.vector import atomic_vector_path

            t0 = time.perf_counter()
            poly_tmp = outs.enter_context(atomic_vector_path(Path(polygons)))
            poly_summary = write_polygons(
                mask_layer.final_tmp,
                poly_tmp,
                target=Path(polygons),
                simplify_m=opts.simplify_m,
                min_area_m2=opts.min_area_m2,
            )
            timings["polygons"] = time.perf_counter() - t0
    t = grid.transform
    if poly_summary is not None and poly_summary.format == "geojson":
        messages.append(f"{polygons}: GeoJSON polygons in WGS 84 lon/lat (RFC 7946)")
    if poly_summary is not None and poly_summary.dropped:
        messages.append(f"{poly_summary.dropped} polygon(s) below the minimum area left out of {polygons}")
    return PredictResult(
        out=out,
        probabilities=Path(probabilities) if probabilities else None,
        uncertainty=Path(uncertainty) if uncertainty else None,
        polygons=Path(polygons) if polygons else None,
        height=grid.height,
        width=grid.width,
        crs=grid.crs.to_wkt() if grid.crs else None,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        tile=plan.tile,
        overlap=plan.overlap,
        tiles=len(plan),
        flooded_pixels=counts["flood"],
        valid_pixels=counts["valid"],
        flooded_km2=counts["km2"] if pixel_area is not None else None,
        polygon_count=poly_summary.count if poly_summary else None,
        polygon_km2=poly_summary.area_km2 if poly_summary else None,
        missing_views=missing,
        classes=scene_cls.summary() if scene_cls is not None else None,
        warnings=warns,
        aligned_views=list(opened.aligned),
        messages=messages,
        timings=timings,
    )


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("tiles", total=total)
        yield lambda n: progress.advance(task, n)


# --------------------------------------------------------------------------------------------------
# from a run directory
# --------------------------------------------------------------------------------------------------


def resolve_preset(
    config: Any,
    units: str,
    run_dir: Path | None = None,
    presets: Mapping[str, Any] | None = None,
    base: str = "clay-v1.5",
) -> Any:
    """The run's normalisation preset for input scenes in `units` (db or linear).

    A run that stored its presets uses its calibrated (dB / linear) one. A run trained on 8-bit
    rescaled sources only has none: the encoder's own preset is used, with a warning, since the
    model never saw calibrated backscatter. Older runs resolve their config (a stats path may be
    run-relative).
    """
    from floodlora.data.sar import PER_SCENE, PRESETS, SCENE_MODES_8BIT, calibrated_run_preset, get_preset

    if config.data.normalization == PER_SCENE:
        return PER_SCENE  # resolved from the scene's own pixels once its views are open
    if presets:
        return calibrated_run_preset(presets, units, base, "scenes")
    name = config.data.normalization
    if name in SCENE_MODES_8BIT:  # calibrated scenes: the encoder's preset
        name = "auto"
    if name != "auto" and name not in PRESETS and run_dir is not None and not Path(name).is_file():
        local = run_dir / name
        if local.is_file():
            name = str(local)
    return get_preset(name, units, None, base)


def resolve_adapter(run_dir: Path, adapter: str) -> Path:
    """An adapter file path, or a name looked up as RUN_DIR/adapters/NAME.safetensors."""
    p = Path(adapter)
    if p.is_file():
        return p
    named = run_dir / "adapters" / f"{adapter}.safetensors"
    if named.is_file():
        return named
    raise ConfigError(f"adapter {adapter!r}: no such file, and no {named}")


def predict_run(
    run_dir: str | Path,
    views: Mapping[str, str | Path],
    out: str | Path,
    *,
    probabilities: str | Path | None = None,
    uncertainty: str | Path | None = None,
    polygons: str | Path | None = None,
    adapter: str | None = None,
    checkpoint: str | None = None,
    options: PredictOptions | None = None,
) -> PredictResult:
    """Load a trained run (or an exported model directory), optionally with another adapter, and
    predict a scene with the run's normalisation and training tile size."""
    from floodlora.runs import load_run

    run_dir = Path(run_dir)
    opts = options or PredictOptions()
    if adapter is not None:
        from floodlora.runs import load_adapter

        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir}: not a floodlora run directory (config.yaml is missing)")
        from floodlora.config import load_config

        base_ckpt = checkpoint or load_config(run_dir / "config.yaml").model.checkpoint
        loaded = load_adapter(resolve_adapter(run_dir, adapter), checkpoint=base_ckpt)
    else:
        loaded = load_run(run_dir, checkpoint=checkpoint)
    from floodlora.models.registry import checkpoint_normalization

    if opts.tile is None:
        opts.tile = int(loaded.config.data.crop_size)
    if opts.threshold is None:
        opts.threshold = loaded.threshold
    if opts.target is not None:
        if opts.target not in loaded.model.outputs and len(loaded.model.outputs) > 1:
            raise ConfigError(f"--target {opts.target}: this run maps {' or '.join(loaded.model.outputs)}")
        loaded.model.target = opts.target
    base_norm = checkpoint_normalization(str(loaded.base.get("checkpoint", loaded.config.model.checkpoint)))
    preset = resolve_preset(loaded.config, opts.units, run_dir, loaded.presets, base_norm)
    tags = {"run": str(run_dir.resolve()), "base_checkpoint": str(loaded.base.get("checkpoint", ""))}
    if adapter is not None:
        tags["adapter"] = str(adapter)
    return predict_scene(
        loaded.model,
        views,
        out,
        preset=preset,
        probabilities=probabilities,
        uncertainty=uncertainty,
        polygons=polygons,
        options=opts,
        tags=tags,
    )
