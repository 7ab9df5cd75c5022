"""Flood classes a responder can act on: new water apart from reference water, exclusions, confidence.

Operational services (Copernicus GFM, OPERA DSWx-S1) deliver more than a water mask: the observed
flood apart from permanent and seasonal water, an exclusion mask where the radar cannot see a
flood, a confidence layer and a minimum mapping unit. `predict` and `map` write the same here:

    classes   0 dry, 1 flood (new water), 2 reference water, 3 excluded, 255 no data
    confidence  uint8 0-100: how far the probability is from the threshold (less the TTA spread)

Class 1 is new water: the model's flood output (with a pre-event view) or its water output
(without), minus water that the pre-event view already shows, minus reference water and
exclusions. A flood output alone is not enough: with the pre-event view replaced by the
post-event one, the recipe's flood output still mapped 15-30 % of OMBRIA chips as flood
(benchmarks/new_water.py). Pre-event water (`--pre-water`) is, by default (`pair`), what the same
flood output flags on the pair (pre, pre), where nothing changed: with pre = post this removes
every flood pixel by construction, for any model. `water` uses the run's water output on the
pre-event view (it found no water on OMBRIA's 8-bit chips), `otsu` an Otsu level of its VV.

Precedence, highest first: no data, excluded, reference water, flood, dry. `--min-area` removes
4-connected flood regions smaller than that from the mask itself (class 1 -> 0), so the mask,
the classes and the polygons agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.data.sample import MASK_NODATA
from floodlora.data.terrain import SceneGrid, TerrainOptions
from floodlora.errors import ConfigError

DRY, FLOOD, REFERENCE, EXCLUDED, NODATA = 0, 1, 2, 3, MASK_NODATA
CLASS_NAMES = {DRY: "dry", FLOOD: "flood", REFERENCE: "reference_water", EXCLUDED: "excluded"}
CLASS_COLORS = {
    DRY: (255, 255, 255, 0),
    FLOOD: (0, 92, 230, 255),
    REFERENCE: (0, 38, 115, 255),
    EXCLUDED: (178, 178, 178, 255),
    NODATA: (0, 0, 0, 0),
}
CLASSES_DESCRIPTION = "classes (0 dry, 1 flood, 2 reference water, 3 excluded, 255 nodata)"
CONFIDENCE_DESCRIPTION = "confidence 0-100 in the flood / no-flood decision (255 nodata)"
PRE_WATER_MODES = ("auto", "pair", "water", "otsu", "off")


@dataclass
class ClassOptions:
    """What the class step reads and writes (`predict --classes ...`, and always in `map`)."""

    classes_path: Path | None = None  # uint8 class raster to write
    confidence_path: Path | None = None  # uint8 0-100 confidence raster to write
    confidence_spread: bool = False  # lower the confidence by the spread over 4 flips (TTA on)
    reference_water: list[str] = field(default_factory=list)  # a local GeoTIFF, or STAC asset hrefs
    reference_local: bool = True  # False: STAC assets (coverage checked on the mosaic)
    reference_threshold: float = 50.0  # JRC occurrence percent at or above which water is reference
    dem: list[str] = field(default_factory=list)  # a local GeoTIFF, or STAC asset hrefs
    dem_local: bool = True
    terrain: TerrainOptions = field(default_factory=TerrainOptions)
    shadow_mask: list[str] = field(default_factory=list)  # a product's own shadow/layover mask asset
    pre_water: str = "auto"  # auto | pair | water | otsu | off
    pre_water_threshold: float | None = None  # probability that counts as pre-event water; None: the run's

    def __post_init__(self) -> None:
        if self.pre_water not in PRE_WATER_MODES:
            raise ConfigError(
                f"--pre-water must be one of {', '.join(PRE_WATER_MODES)}, got {self.pre_water!r}"
            )
        if self.pre_water_threshold is not None and not 0 < self.pre_water_threshold < 1:
            raise ConfigError(f"--pre-water-threshold must be in (0, 1), got {self.pre_water_threshold}")

    @property
    def active(self) -> bool:
        """Whether anything beyond the plain mask is asked for."""
        return bool(
            self.classes_path or self.confidence_path or self.reference_water or self.dem or self.shadow_mask
        )


# --------------------------------------------------------------------------------------------------
# per-pixel rules (numpy; the benchmark and the tests call these directly)
# --------------------------------------------------------------------------------------------------


def new_water(flood: np.ndarray, pre_water: np.ndarray | None) -> np.ndarray:
    """Flood that the pre-event view does not already show as water."""
    return flood if pre_water is None else flood & ~pre_water


def assign_classes(
    flood: np.ndarray,
    valid: np.ndarray,
    reference: np.ndarray | None = None,
    excluded: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 classes from boolean layers; precedence no data > excluded > reference > flood > dry."""
    out = np.where(flood, FLOOD, DRY).astype(np.uint8)
    if reference is not None:
        out[reference] = REFERENCE
    if excluded is not None:
        out[excluded] = EXCLUDED
    out[~valid] = NODATA
    return out


def confidence(
    prob: np.ndarray, valid: np.ndarray, threshold: float, spread: np.ndarray | None = None
) -> np.ndarray:
    """uint8 0-100 confidence in the flood / no-flood decision, 255 no data.

    0 at the threshold, 100 at probability 1 (flood) or 0 (dry), linear in between on each side;
    with a spread (the std over TTA flips, at most 0.5) it is scaled by 1 - 2 * spread, so a
    decision that flips under augmentation is not confident.
    """
    p = np.clip(np.nan_to_num(prob, nan=threshold), 0.0, 1.0)
    c = np.where(
        p >= threshold, (p - threshold) / max(1.0 - threshold, 1e-6), (threshold - p) / max(threshold, 1e-6)
    )
    if spread is not None:
        c = c * np.clip(1.0 - 2.0 * np.nan_to_num(spread, nan=0.0), 0.0, 1.0)
    out = np.rint(100.0 * np.clip(c, 0.0, 1.0)).astype(np.uint8)
    out[~valid] = NODATA
    return out


def remove_small(mask: np.ndarray, min_pixels: int) -> tuple[np.ndarray, int]:
    """`mask` without its 4-connected regions of fewer than `min_pixels` pixels; and how many went."""
    if min_pixels <= 1 or not mask.any():
        return mask, 0
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes < min_pixels
    small[0] = False
    return mask & ~small[labels], int(small.sum())


def otsu_level(values: np.ndarray) -> float:
    """Otsu's level of the finite `values` (scikit-image)."""
    from skimage.filters import threshold_otsu

    finite = values[np.isfinite(values)]
    if finite.size < 2 or float(finite.min()) == float(finite.max()):
        return float("-inf")
    return float(threshold_otsu(finite))


def to_db(values: np.ndarray, units: str) -> np.ndarray:
    if units == "db":
        return values
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, 10.0 * np.log10(values), np.nan).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# pre-event water
# --------------------------------------------------------------------------------------------------


@dataclass
class PreWater:
    """How pre-event water is found: `mode` pair | water | otsu | off, from view `pre_view`."""

    mode: str
    pre_view: str | None = None
    post_view: str | None = None  # the model view that receives the pre-event image (pair, water)
    level_db: float | None = None  # Otsu level of the pre-event VV (mode otsu)
    message: str | None = None


def resolve_pre_water(
    opts: ClassOptions | None, model: Any, given: Sequence[str], target: str | None
) -> PreWater:
    """Pick the pre-event water rule; `auto`: `pair` when classes are written or the run has a water
    output (the recipe), else off (a plain flood-only mask stays what it was).

    Off without a pre-event view, and when the map is of all water (`--target water`).
    """
    mode = opts.pre_water if opts is not None else "auto"
    pre = next((v for v in given if v.startswith("pre")), None)
    outputs = tuple(getattr(model, "outputs", ("flood",)))
    if pre is None or mode == "off" or target == "water":
        return PreWater("off")
    model_views = list(getattr(model, "views", ()))
    post = pre.replace("pre", "post", 1)
    if post not in model_views:
        post = next((v for v in model_views if v.startswith("post")), "post")
    has_water = "water" in outputs and len(outputs) > 1
    if mode == "water" and not has_water:
        raise ConfigError(
            f"--pre-water water needs a run with a water output (this one has {', '.join(outputs)}); "
            "use --pre-water pair or otsu"
        )
    if mode == "auto":
        if has_water or (opts is not None and opts.active):
            mode = "pair"
        else:
            return PreWater("off")
    why = {
        "pair": f"the flood output on ({pre}, {pre})",
        "water": "the run's water output",
        "otsu": "an Otsu level of its VV",
    }[mode]
    return PreWater(mode, pre, post, message=f"new water only: water on the {pre} view ({why}) is not flood")


def pre_water_probability(
    model: Any, x: Mapping[str, Any], time: Mapping[str, Any], latlon: Any, pw: PreWater, tta: bool
) -> Any:
    """Pre-event water probability `[B, 1, H, W]` of the tiles: the flood output on (pre, pre)
    (`pair`, with the same flips as the main pass) or the water output on the pre view (`water`)."""
    from floodlora.inference.uncertainty import predict_probabilities

    assert pw.pre_view is not None and pw.post_view is not None
    pre_x, pre_t = x[pw.pre_view], time[pw.pre_view]
    if pw.mode == "pair":
        views = {pw.pre_view: pre_x, pw.post_view: pre_x}
        times = {pw.pre_view: pre_t, pw.post_view: pre_t}
        target = "flood"
    else:
        views, times, target = {pw.post_view: pre_x}, {pw.post_view: pre_t}, "water"
    old = getattr(model, "target", None)
    if len(getattr(model, "outputs", ())) > 1:
        model.target = target
    try:
        prob, _ = predict_probabilities(model, views, times, latlon, tta and pw.mode == "pair", 0)
    finally:
        if hasattr(model, "target"):
            model.target = old
    return prob


# --------------------------------------------------------------------------------------------------
# the scene's class step, strip by strip
# --------------------------------------------------------------------------------------------------


@dataclass
class Strip:
    row: int
    mask: np.ndarray  # uint8 0/1/255: class 1 only
    classes: np.ndarray
    confidence: np.ndarray | None


class SceneClasses:
    """Ancillary layers on the scene grid and the per-strip class rule, with per-class counts.

    Without `--min-area` each strip is final when it comes; with it the strips are held (1 byte
    per pixel for the classes, plus the labels of scipy while removing small regions) until the
    whole scene is known.
    """

    def __init__(
        self,
        opts: ClassOptions | None,
        grid: SceneGrid,
        threshold: float,
        min_area_m2: float | None,
        pixel_area_km2: Callable[[int], float] | None,
    ) -> None:
        from floodlora.data import terrain

        self.opts = opts or ClassOptions()
        self.threshold = threshold
        self.pixel_area = pixel_area_km2
        self.messages: list[str] = []
        self.reference: np.ndarray | None = None
        self.excluded: np.ndarray | None = None
        self.exclusion_counts: dict[str, int] = {}
        o = self.opts
        if o.reference_water:
            self.reference, msgs = terrain.reference_water(
                o.reference_water, grid, o.reference_threshold, o.reference_local
            )
            self.messages += msgs
        if o.dem:
            ex = terrain.terrain_exclusions(o.dem, grid, o.terrain, o.dem_local)
            self.excluded, self.exclusion_counts = ex.excluded, ex.counts
            self.messages += ex.messages
        if o.shadow_mask:
            mask, msgs = terrain.product_mask(o.shadow_mask, grid)
            self.exclusion_counts["product_mask"] = int(mask.sum())
            self.excluded = mask if self.excluded is None else self.excluded | mask
            self.messages += msgs
        self.min_pixels = 0
        if min_area_m2:
            t = grid.transform
            if grid.crs is not None and grid.crs.is_projected:
                unit = float(grid.crs.linear_units_factor[1])
                px_m2 = abs(t.a * t.e - t.b * t.d) * unit**2
            elif pixel_area_km2 is not None:
                px_m2 = pixel_area_km2(grid.height // 2) * 1e6
            else:
                raise ConfigError("--min-area needs a georeferenced scene (pixel size in metres)")
            self.min_pixels = int(np.ceil(min_area_m2 / px_m2))
        self.held: list[Strip] = []
        self.removed_regions = 0
        self.pixels = dict.fromkeys(CLASS_NAMES.values(), 0)
        self.km2 = dict.fromkeys(CLASS_NAMES.values(), 0.0)

    def strip(
        self,
        row: int,
        prob: np.ndarray,
        valid: np.ndarray,
        pre_water_prob: np.ndarray | None,
        spread: np.ndarray | None,
    ) -> list[Strip]:
        """The strips that are final now (this one, or none while held for `--min-area`)."""
        h = prob.shape[0]
        flood = valid & (prob >= self.threshold)
        pre_t = self.opts.pre_water_threshold
        pre = (
            None if pre_water_prob is None else pre_water_prob >= (self.threshold if pre_t is None else pre_t)
        )
        flood = new_water(flood, pre)
        ref = None if self.reference is None else self.reference[row : row + h]
        exc = None if self.excluded is None else self.excluded[row : row + h]
        classes = assign_classes(flood, valid, ref, exc)
        conf = None
        if self.opts.confidence_path is not None:
            conf = confidence(prob, valid, self.threshold, spread if self.opts.confidence_spread else None)
        s = Strip(row, _mask_of(classes), classes, conf)
        if self.min_pixels > 1:
            self.held.append(s)
            return []
        self._count(s)
        return [s]

    def finish(self) -> Iterator[Strip]:
        """The held strips with small flood regions removed (class 1 -> 0), when `--min-area` holds them."""
        if not self.held:
            return
        classes = np.concatenate([s.classes for s in self.held])
        kept, self.removed_regions = remove_small(classes == FLOOD, self.min_pixels)
        classes[(classes == FLOOD) & ~kept] = DRY
        for s in self.held:
            h = s.classes.shape[0]
            s.classes = classes[s.row - self.held[0].row :][:h]
            s.mask = _mask_of(s.classes)
            self._count(s)
            yield s
        self.held = []

    def _count(self, s: Strip) -> None:
        for code, name in CLASS_NAMES.items():
            per_row = (s.classes == code).sum(axis=1)
            self.pixels[name] += int(per_row.sum())
            if self.pixel_area is not None:
                self.km2[name] += float(
                    sum(int(n) * self.pixel_area(s.row + i) for i, n in enumerate(per_row))
                )

    def summary(self) -> dict[str, Any]:
        """Pixels and km2 per class, exclusions by rule, regions removed by `--min-area`."""
        return {
            "classes_pixels": dict(self.pixels),
            "classes_km2": dict(self.km2) if self.pixel_area is not None else None,
            "exclusions_pixels": dict(self.exclusion_counts),
            "min_area_pixels": self.min_pixels,
            "min_area_removed_regions": self.removed_regions,
        }


def _mask_of(classes: np.ndarray) -> np.ndarray:
    """The flood mask contract (1 flood, 0 not, 255 no data) from the classes."""
    return np.where(classes == NODATA, NODATA, classes == FLOOD).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# `map`: the layers from the STAC catalog (the same client as `fetch`) or from local files
# --------------------------------------------------------------------------------------------------

LAYER_SOURCES = ("auto", "stac", "none")  # or a local GeoTIFF path
CLASSES_TIF = "classes.tif"
CONFIDENCE_TIF = "confidence.tif"


@dataclass
class MapLayers:
    """`map`'s class flags: where reference water and the DEM come from, and the thresholds.

    `auto` takes the STAC collection when the catalog has it over the bbox and says so when it
    does not; `stac` requires it; `none` leaves the class out; anything else is a GeoTIFF path.
    """

    reference_water: str = "auto"
    reference_collection: str = "jrc-gsw"
    reference_asset: str = "occurrence"
    reference_threshold: float = 50.0
    dem: str = "auto"
    dem_collection: str = "cop-dem-glo-30"
    dem_asset: str = "data"
    terrain: TerrainOptions = field(default_factory=TerrainOptions)
    confidence_tta: bool = False
    pre_water: str = "auto"
    pre_water_threshold: float | None = None


def _layer_sources(
    choice: str, what: str, collection: str, asset: str, catalog: str, bbox: Sequence[float]
) -> tuple[list[str], bool, list[str]]:
    """(sources, local, notes) for one layer of `map`."""
    from floodlora.data import terrain

    if choice == "none":
        return [], True, [f"{what}: none asked for"]
    if choice not in ("auto", "stac"):
        if not Path(choice).is_file():
            raise ConfigError(f"--{what.replace(' ', '-')} {choice}: no such file (or auto, stac, none)")
        return [choice], True, []
    items = terrain.stac_assets(catalog, collection, asset, bbox, required=choice == "stac")
    if not items:
        return [], True, [f"{what}: no {collection!r} item over the bbox in {catalog}; the map has none"]
    hrefs = terrain.asset_hrefs(items, asset, sign="planetarycomputer" in catalog)
    return hrefs, False, [f"{what}: {collection} {', '.join(i.id for i in items)}"]


def map_class_options(
    layers: MapLayers | None, fetch_info: Mapping[str, Any], catalog: str, out_dir: Path
) -> tuple[ClassOptions, list[str]]:
    """ClassOptions for `map`: classes.tif and confidence.tif in `out_dir`, the layers from the
    catalog (or files), the pass direction and incidence angle from the post-event items."""
    import dataclasses

    spec = layers or MapLayers()
    bbox = fetch_info["bbox"]
    ref, ref_local, notes = _layer_sources(
        spec.reference_water,
        "reference water",
        spec.reference_collection,
        spec.reference_asset,
        catalog,
        bbox,
    )
    dem, dem_local, dem_notes = _layer_sources(
        spec.dem, "dem", spec.dem_collection, spec.dem_asset, catalog, bbox
    )
    post = fetch_info["post"]
    angles = [i["incidence_angle"] for i in post["items"] if i.get("incidence_angle") is not None]
    terrain_opts = dataclasses.replace(
        spec.terrain,
        orbit_state=spec.terrain.orbit_state or post.get("orbit_state"),
        incidence_deg=spec.terrain.incidence_deg or (sum(angles) / len(angles) if angles else None),
    )
    masks = [i["mask_href"] for i in post["items"] if i.get("mask_href")]
    opts = ClassOptions(
        classes_path=out_dir / CLASSES_TIF,
        confidence_path=out_dir / CONFIDENCE_TIF,
        confidence_spread=spec.confidence_tta,
        reference_water=ref,
        reference_local=ref_local,
        reference_threshold=spec.reference_threshold,
        dem=dem,
        dem_local=dem_local,
        terrain=terrain_opts,
        shadow_mask=masks,
        pre_water=spec.pre_water,
        pre_water_threshold=spec.pre_water_threshold,
    )
    return opts, notes + dem_notes
