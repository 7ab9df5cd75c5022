"""Where to label next: the footprints of the tiles where a model is least certain.

`floodlora suggest RUN --view post=POST.tif [--view pre=PRE.tif] --n 10 --out tiles.gpkg`

The scene is predicted as `floodlora predict` does, with its uncertainty layer (the spread of the
flood probability over the 4 flips, or over N LoRA-dropout samples with `mc_dropout`). The scene is
cut into `size` tiles on the same grid as `floodlora labels` cuts chips; each tile with enough valid
pixels is scored by its mean spread, and the N highest are written (pyogrio) as polygons in the
scene CRS (GeoJSON: WGS 84), ordered by uncertainty, with ``rank`` 1 the most uncertain.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.errors import ConfigError, DataError

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}
LAYER = "suggested_tiles"
FIELDS = ("rank", "uncertainty", "uncertainty_p90", "flood_fraction", "valid_fraction", "row", "col", "size")


@dataclass
class TileScore:
    row: int
    col: int
    height: int
    width: int
    uncertainty: float  # mean probability spread over the tile's valid pixels
    uncertainty_p90: float
    flood_fraction: float
    valid_fraction: float


@dataclass
class SuggestResult:
    out: Path
    tiles: list[TileScore]
    scored: int  # tiles with enough valid pixels
    method: str
    crs: str | None
    messages: list[str] = field(default_factory=list)


def _driver(path: Path) -> str:
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise ConfigError(
            f"{path}: write tiles as .gpkg, .geojson or .fgb, not {path.suffix or 'no extension'}"
        )
    return driver


def score_tiles(
    uncertainty: str | Path, mask: str | Path, size: int, min_valid: float = 0.5
) -> tuple[list[TileScore], Any, Any]:
    """Per-tile mean spread over valid pixels, flood and valid shares; also the grid's CRS and transform."""
    import rasterio
    from rasterio.windows import Window

    from floodlora.data.labels import chip_windows

    scores = []
    with rasterio.open(uncertainty) as unc, rasterio.open(mask) as msk:
        for r, c, h, w in chip_windows(unc.height, unc.width, size):
            win = Window(c, r, w, h)
            u = unc.read(1, window=win)
            m = msk.read(1, window=win)
            valid = np.isfinite(u) & (m != 255)
            frac = float(valid.mean())
            if frac < min_valid or not valid.any():
                continue
            vals = u[valid]
            scores.append(
                TileScore(r, c, h, w, float(vals.mean()), float(np.percentile(vals, 90)),
                          float((m[valid] == 1).mean()), frac)
            )  # fmt: skip
        return scores, unc.crs, unc.transform


def write_tiles(path: str | Path, tiles: list[TileScore], crs: Any, transform: Any) -> Path:
    """Tile footprints with their scores, atomically (GeoJSON in WGS 84, others in the scene CRS)."""
    import pyogrio
    import shapely
    from rasterio.warp import transform_geom

    from floodlora.io import atomic_path

    path = Path(path)
    driver = _driver(path)
    geoms = []
    for t in tiles:
        x0, y0 = transform @ (t.col, t.row)
        x1, y1 = transform @ (t.col + t.width, t.row + t.height)
        geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    out_crs = crs
    if driver == "GeoJSON" and crs is not None:
        geoms = [
            shapely.geometry.shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(g)))
            for g in geoms
        ]
        out_crs = "EPSG:4326"
    columns = [
        np.arange(1, len(tiles) + 1, dtype=np.int32),
        np.array([t.uncertainty for t in tiles], dtype=np.float64),
        np.array([t.uncertainty_p90 for t in tiles], dtype=np.float64),
        np.array([t.flood_fraction for t in tiles], dtype=np.float64),
        np.array([t.valid_fraction for t in tiles], dtype=np.float64),
        np.array([t.row for t in tiles], dtype=np.int32),
        np.array([t.col for t in tiles], dtype=np.int32),
        np.array([t.height for t in tiles], dtype=np.int32),
    ]
    from rasterio.crs import CRS

    wkt = CRS.from_user_input(out_crs).to_wkt() if out_crs is not None else None
    with atomic_path(path) as tmp:
        tmp.unlink()  # GDAL creates the file itself
        target = tmp.with_suffix(path.suffix)
        try:
            pyogrio.raw.write(
                target, np.array(shapely.to_wkb(geoms), dtype=object), columns, list(FIELDS), layer=LAYER,
                driver=driver, geometry_type="Polygon", crs=wkt,
            )  # fmt: skip
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)
    return path


def suggest_tiles(
    run_dir: str | Path,
    views: Mapping[str, str | Path],
    out: str | Path,
    *,
    n: int = 10,
    size: int = 256,
    mc_dropout: int = 0,
    min_valid: float = 0.5,
    units: str = "db",
    checkpoint: str | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> SuggestResult:
    """Predict the scene with an uncertainty layer and write the `n` most uncertain tiles' footprints."""
    from floodlora.inference.predict import PredictOptions, predict_run
    from floodlora.io import scratch_dir

    out = Path(out)
    _driver(out)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if size < 8 or size % 8:
        raise ConfigError(f"--size must be a multiple of 8 (>= 8), got {size}")
    if mc_dropout == 1 or mc_dropout < 0:
        raise ConfigError(f"--mc-dropout needs at least 2 samples (0: flip TTA), got {mc_dropout}")
    opts = PredictOptions(
        mc_samples=mc_dropout, tta=mc_dropout == 0, units=units, cog=False, progress=progress,
        batch_size=batch_size,
    )  # fmt: skip
    # the whole-scene mask and spread raster go beside the output, not to the system temp directory:
    # a killed run leaves them where the next run's stale-scratch sweep removes them
    made_parent = not out.parent.exists()
    tmp = scratch_dir(out, ".d")
    try:
        pred = predict_run(
            run_dir, views, tmp / "mask.tif", uncertainty=tmp / "spread.tif", checkpoint=checkpoint,
            options=opts,
        )  # fmt: skip
        scores, crs, transform = score_tiles(tmp / "spread.tif", tmp / "mask.tif", size, min_valid)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):  # only if still empty
                out.parent.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    if not scores:
        raise DataError(
            f"no {size}-px tile has {100 * min_valid:g}% valid pixels; lower --min-valid or --size"
        )
    ranked = sorted(scores, key=lambda t: (-t.uncertainty, t.row, t.col))[:n]
    messages = [m for m in pred.messages if "using the spread over 4 flips" not in m]
    if len(ranked) < n:
        messages.append(f"only {len(ranked)} tiles with enough valid pixels (asked for {n})")
    write_tiles(out, ranked, crs, transform)
    method = f"std over {mc_dropout} LoRA-dropout samples" if mc_dropout else "std over 4 flips (TTA)"
    return SuggestResult(out, ranked, len(scores), method, str(crs) if crs else None, messages)


def format_suggest(result: SuggestResult) -> str:
    lines = [f"warning: {m}" for m in result.messages]
    lines.append(
        f"{len(result.tiles)} of {result.scored} tiles written to {result.out}, most uncertain first "
        f"(probability spread: {result.method})"
    )
    for i, t in enumerate(result.tiles[:5], start=1):
        lines.append(
            f"  {i}. row {t.row} col {t.col}: spread {t.uncertainty:.3f}, flood {100 * t.flood_fraction:.0f}%"
        )
    lines.append("next: floodlora labels --scene POST.tif --flood FLOOD.gpkg --aoi TILES --out CHIPS")
    return "\n".join(lines)
