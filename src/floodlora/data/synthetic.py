"""Physically plausible Sentinel-1 flood scenes: the embedded default data (physics in docs/synthetic.md).

A scene is built in four layers, all deterministic per (domain, seed):

1. geography: fractal terrain, a meandering river with its valley, a height-above-river map that
   decides what floods, optional ponds (permanent water), field parcels, forest, a town and roads;
2. radiometry: sigma0 per class and polarisation in dB at a reference incidence angle, per-parcel
   variation, per-class incidence slopes, terrain (local incidence) effects that differ between the
   ascending (east-looking) and descending (west-looking) geometry, wind roughening on water;
3. the flood: post-event views turn flooded land into open water, except flooded forest, tall crops
   and buildings, which brighten through double bounce (still labelled flood);
4. the sensor: additive noise floor (NESZ) and multiplicative Gamma speckle (ENL about 4.4).

The ``ood`` domain shifts the statistics (arid bare soil and sand as dark as water, more town,
rougher relief with radar shadow, windier water, other incidence angles) for the unseen-event test.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.config import LABEL_KINDS
from floodlora.data.sample import BANDS, MASK_NODATA, VIEWS, Sample, SampleMeta
from floodlora.errors import ConfigError

GSD_M = 10.0  # Sentinel-1 IW GRD pixel spacing
ENL = 4.4  # equivalent number of looks of Sentinel-1 IW GRDH (ESA product definition)
NESZ_DB = -26.0  # typical noise-equivalent sigma0 of IW mode (spec <= -22 dB)
THETA_REF = 37.0  # reference incidence angle (deg) of the class table

# class ids of the land-cover map
FIELD, TALL_CROP, FOREST, URBAN, BARE, SAND, ROAD = range(7)
# mean sigma0 at THETA_REF in dB: (VV, VH), the per-parcel spread (dB), incidence slope (dB/deg)
CLASS_DB: dict[int, tuple[float, float, float, float]] = {
    FIELD: (-10.5, -17.5, 1.8, -0.15),  # grass / low crops
    TALL_CROP: (-9.0, -15.5, 1.5, -0.12),  # maize, sunflower
    FOREST: (-7.5, -14.0, 0.8, -0.05),  # volume scattering, weak angle dependence
    URBAN: (0.0, -9.0, 3.0, -0.10),  # double bounce, very bright
    BARE: (-13.5, -21.5, 2.0, -0.25),  # moist bare / ploughed soil
    SAND: (-19.5, -26.5, 2.0, -0.30),  # dry sand, smooth arid surfaces: water lookalike
    ROAD: (-18.0, -25.0, 1.0, -0.30),  # asphalt, smooth
}
WATER_DB = (-22.5, -28.5, 1.0, -0.40)  # calm open water: specular, steep angle dependence
# flooded vegetation / buildings: dB change over the dry class in post-event views (double bounce)
FLOODED_DELTA_DB: dict[int, tuple[float, float]] = {
    FOREST: (4.5, 0.5),
    TALL_CROP: (3.5, -1.0),
    URBAN: (3.0, -0.5),
}

DOMAINS: dict[str, dict[str, Any]] = {
    "in": {  # temperate agricultural river valley (Europe)
        "landcover": {FIELD: 0.5, TALL_CROP: 0.18, FOREST: 0.0, BARE: 0.12, SAND: 0.0},
        "forest_cover": (0.08, 0.3),
        "urban_radius": (0.0, 0.18),
        "relief_m": (8.0, 25.0),
        "theta": (31.0, 44.0),
        "wind_db": (0.0, 2.0),
        "flood_fraction": (0.08, 0.35),
        "lat": (44.0, 53.0),
        "lon": (-1.0, 24.0),
        "season": (2, 11),
    },
    "ood": {  # arid / urbanised floodplain (e.g. the Indus), other geometry, windy water
        "landcover": {FIELD: 0.18, TALL_CROP: 0.05, FOREST: 0.0, BARE: 0.35, SAND: 0.3},
        "forest_cover": (0.0, 0.05),
        "urban_radius": (0.15, 0.35),
        "relief_m": (30.0, 90.0),
        "theta": (22.0, 30.0),
        "wind_db": (0.5, 3.0),
        "flood_fraction": (0.05, 0.3),
        "lat": (24.0, 31.0),
        "lon": (66.5, 72.0),
        "season": (7, 9),
    },
}


# --------------------------------------------------------------------------------------------------
# geography
# --------------------------------------------------------------------------------------------------


def _fractal(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Zero-mean unit-std noise with a 1/f^beta power spectrum (beta 3-4: smooth terrain-like fields)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * _complex_noise(rng, size)
    field = np.fft.irfft2(spec, s=(size, size))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _complex_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    shape = (size, size // 2 + 1)
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _geography(rng: np.random.Generator, size: int, p: dict[str, Any]) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # river: a meandering centreline in a rotated frame; distance ~ |v - v_centre(u)|
    ang = rng.uniform(0, np.pi)
    u = xx * np.cos(ang) + yy * np.sin(ang)
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    c = size / 2.0
    v0 = -c * np.sin(ang) + c * np.cos(ang) + rng.uniform(-0.2, 0.2) * size
    lam = size * rng.uniform(0.5, 1.4)
    amp = size * rng.uniform(0.04, 0.14)
    centre = v0 + amp * np.sin(2 * np.pi * u / lam + rng.uniform(0, 2 * np.pi))
    centre += 0.3 * amp * np.sin(2 * np.pi * u / (lam * 0.37) + rng.uniform(0, 2 * np.pi))
    dist = np.abs(v - centre)  # pixels
    width = rng.uniform(2.0, 6.0) * max(1.0, size / 256.0)
    relief = rng.uniform(*p["relief_m"])
    terrain = _fractal(rng, size, 3.2)
    # height above the river: valley slope away from the channel + rough terrain
    hand = 0.02 * GSD_M * dist * rng.uniform(0.6, 1.6) + 0.15 * relief * (terrain - terrain.min())
    elevation = hand + 0.5 * relief * _fractal(rng, size, 3.8)
    river = dist < width / 2.0
    ponds = _fractal(rng, size, 3.0) > rng.uniform(2.2, 3.5)
    permanent = river | ponds
    # flood: the lowest land by height above the river, to a random fraction of the scene
    frac = rng.uniform(*p["flood_fraction"])
    level = np.quantile(hand[~permanent], frac) if (~permanent).any() else 0.0
    flood = (hand <= level) & ~permanent

    # land cover: rotated, jittered field parcels with a class each; forest and town on top
    pang = rng.uniform(0, np.pi / 2)
    pu = xx * np.cos(pang) + yy * np.sin(pang)
    pv = -xx * np.sin(pang) + yy * np.cos(pang)
    pw, ph = rng.uniform(12, 35), rng.uniform(10, 28)
    row = np.floor(pv / ph).astype(np.int64)
    col = np.floor((pu + (row * 7919 % 13) * pw / 13.0) / pw).astype(np.int64)
    parcel = ((row * 92821 + col * 68903) % 4093).astype(np.int64)
    classes = np.array(list(p["landcover"].keys()))
    probs = np.array(list(p["landcover"].values()), dtype=np.float64)
    table = rng.choice(classes, size=4093, p=probs / probs.sum())
    lc = table[parcel]
    cover = rng.uniform(*p["forest_cover"])
    if cover > 0.005:
        fnoise = _fractal(rng, size, 3.0)
        lc[fnoise > np.quantile(fnoise, 1.0 - cover)] = FOREST
    r = rng.uniform(*p["urban_radius"]) * size
    if r > 2:
        ux, uy = rng.uniform(0.15, 0.85, 2) * size
        edge = 0.25 * r * _fractal(rng, size, 2.5)
        town = np.hypot(xx - ux, yy - uy) + edge < r
        streets = ((xx.astype(np.int64) % 9) < 2) | ((yy.astype(np.int64) % 11) < 2)
        lc[town] = URBAN
        lc[town & streets] = ROAD
    # a few straight roads
    for _ in range(rng.integers(0, 3)):
        a = rng.uniform(0, np.pi)
        d = np.abs(-xx * np.sin(a) + yy * np.cos(a) - rng.uniform(-0.3, 0.7) * size)
        lc[d < 1.0] = ROAD
    return {
        "elevation": elevation.astype(np.float32),
        "permanent": permanent,
        "flood": flood,
        "lc": lc,
        "parcel": parcel,
    }


# --------------------------------------------------------------------------------------------------
# radiometry
# --------------------------------------------------------------------------------------------------


def _geometry(view: str, base: dict[str, float]) -> tuple[float, int]:
    """(incidence angle, look sign) of a view: ascending looks east (+1), descending west (-1)."""
    orbit = "desc" if view.endswith("_desc") else "asc"
    return base[orbit], (1 if orbit == "asc" else -1)


def _sigma0_db(
    rng: np.random.Generator,
    geo: dict[str, np.ndarray],
    band_idx: int,
    theta: float,
    look: int,
    post: bool,
    wind_db: float,
    parcel_off: np.ndarray,
    season_off: np.ndarray,
    wind_field: np.ndarray,
) -> np.ndarray:
    lc = geo["lc"]
    n = len(CLASS_DB)
    mean = np.array([CLASS_DB[k][band_idx] for k in range(n)], dtype=np.float32)
    spread = np.array([CLASS_DB[k][2] for k in range(n)], dtype=np.float32)
    slope = np.array([CLASS_DB[k][3] for k in range(n)], dtype=np.float32)
    # local incidence angle from the terrain slope along the look direction (x = east)
    dzdx = np.gradient(geo["elevation"], GSD_M, axis=1)
    tilt = np.degrees(np.arctan(dzdx)) * look
    theta_loc = theta - tilt
    db = mean[lc] + spread[lc] * parcel_off[geo["parcel"] % parcel_off.size]
    db += slope[lc] * (theta_loc - THETA_REF) + season_off[geo["parcel"] % season_off.size]
    # foreshortening / area term: slopes facing the sensor are brighter, shadowed slopes dark
    with np.errstate(invalid="ignore", divide="ignore"):
        area = 10.0 * np.log10(np.sin(np.radians(theta)) / np.clip(np.sin(np.radians(theta_loc)), 0.05, None))
    db += np.clip(area, -6.0, 6.0)
    shadow = theta_loc > 75.0
    db[shadow] = NESZ_DB - 2.0
    water_db = WATER_DB[band_idx] + WATER_DB[3] * (theta - THETA_REF) + wind_db * wind_field
    water = geo["permanent"] | (geo["flood"] if post else np.zeros_like(geo["permanent"]))
    if post:
        for cls, delta in FLOODED_DELTA_DB.items():
            fv = geo["flood"] & (lc == cls)
            db[fv] += delta[band_idx]
            water &= ~fv
        wet = geo["flood_edge"] & ~water
        db[wet] += 1.5  # wet soil next to the flood: higher dielectric constant, brighter
    db[water] = water_db[water]
    return db


def _speckle(rng: np.random.Generator, db: np.ndarray) -> np.ndarray:
    """Add the noise floor and multiplicative Gamma speckle (mean 1, ENL looks) in linear power."""
    lin = np.power(10.0, db / 10.0, dtype=np.float32) + np.float32(10 ** (NESZ_DB / 10.0))
    lin *= rng.gamma(ENL, 1.0 / ENL, size=db.shape).astype(np.float32)
    return (10.0 * np.log10(lin)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# georeferencing
# --------------------------------------------------------------------------------------------------


def utm_forward(lat: float, lon: float) -> tuple[int, float, float]:
    """(EPSG code, easting, northing) of a WGS84 point in its UTM zone (Snyder 1987, eqs. 8-9 to 8-13)."""
    zone = int((lon + 180.0) // 6.0) + 1
    lon0 = math.radians(zone * 6.0 - 183.0)
    a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
    e2 = f * (2 - f)
    ep2 = e2 / (1 - e2)
    phi, lam = math.radians(lat), math.radians(lon)
    n = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    t = math.tan(phi) ** 2
    c = ep2 * math.cos(phi) ** 2
    aa = math.cos(phi) * (lam - lon0)
    m = a * (
        (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256) * phi
        - (3 * e2 / 8 + 3 * e2**2 / 32 + 45 * e2**3 / 1024) * math.sin(2 * phi)
        + (15 * e2**2 / 256 + 45 * e2**3 / 1024) * math.sin(4 * phi)
        - (35 * e2**3 / 3072) * math.sin(6 * phi)
    )
    x = k0 * n * (aa + (1 - t + c) * aa**3 / 6 + (5 - 18 * t + t * t + 72 * c - 58 * ep2) * aa**5 / 120)
    y = k0 * (
        m
        + n
        * math.tan(phi)
        * (
            aa**2 / 2
            + (5 - t + 9 * c + 4 * c * c) * aa**4 / 24
            + (61 - 58 * t + t * t + 600 * c - 330 * ep2) * aa**6 / 720
        )
    )
    north = lat >= 0
    return (32600 if north else 32700) + zone, x + 500000.0, y if north else y + 10000000.0


@lru_cache(maxsize=64)
def _crs_wkt(epsg: int) -> str:
    from rasterio.crs import CRS

    return CRS.from_epsg(epsg).to_wkt()


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def _domain_params(domain: str) -> dict[str, Any]:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown synthetic domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return DOMAINS[domain]


def event_name(domain: str, seed: int) -> str:
    """``synthetic-in`` for the training domain; each ood seed is its own unseen event."""
    return "synthetic-in" if domain == "in" else f"synthetic-{domain}-{seed}"


def generate_scene(
    size: int,
    domain: str = "in",
    seed: int = 0,
    views: Sequence[str] = ("pre", "post"),
    bands: Sequence[str] = ("vv", "vh"),
    target: str = "flood",
    nodata_edge_prob: float = 0.1,
) -> Sample:
    """One georeferenced scene in dB; mask 1 = flooded (water in post but not pre), or all post-event
    water with ``target="water"``. Deterministic per (size, domain, seed)."""
    p = _domain_params(domain)
    if size < 16:
        raise ConfigError(f"synthetic scene size must be >= 16 px, got {size}")
    bad_views = [v for v in views if v not in VIEWS]
    bad_bands = [b for b in bands if b not in BANDS]
    if bad_views or bad_bands or not views or not bands:
        raise ConfigError(f"synthetic scene: unknown views/bands {bad_views + bad_bands}")
    if target not in LABEL_KINDS:
        raise ConfigError(f"synthetic target must be one of {', '.join(LABEL_KINDS)}, got {target!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), size, list(DOMAINS).index(domain)]))
    geo = _geography(rng, size, p)
    flood = geo["flood"]
    edge = np.zeros_like(flood)
    edge[1:, :] |= flood[:-1, :]
    edge[:-1, :] |= flood[1:, :]
    edge[:, 1:] |= flood[:, :-1]
    edge[:, :-1] |= flood[:, 1:]
    geo["flood_edge"] = edge

    theta = {"asc": rng.uniform(*p["theta"]), "desc": rng.uniform(*p["theta"])}
    parcel_off = rng.standard_normal(4093).astype(np.float32)  # shared by views and bands
    wind_field = np.clip(1.0 + 0.5 * _fractal(rng, size, 2.5), 0.0, None).astype(np.float32)
    out: dict[str, dict[str, np.ndarray]] = {}
    for view in views:
        post = view.startswith("post")
        th, look = _geometry(view, theta)
        season = (0.6 * rng.standard_normal(4093)).astype(np.float32)
        wind = rng.uniform(*p["wind_db"])
        out[view] = {}
        for band in bands:
            bi = BANDS.index(band)
            db = _sigma0_db(rng, geo, bi, th, look, post, wind, parcel_off, season, wind_field)
            out[view][band] = _speckle(rng, db)

    mask = (flood if target == "flood" else flood | geo["permanent"]).astype(np.uint8)
    if rng.random() < nodata_edge_prob:  # a swath edge: a wedge of nodata in every view
        yy, xx = np.mgrid[0:size, 0:size]
        wedge = xx < rng.uniform(0.05, 0.25) * size + 0.1 * yy
        for bands_ in out.values():
            for arr in bands_.values():
                arr[wedge] = np.nan
        mask[wedge] = MASK_NODATA

    lat = float(rng.uniform(*p["lat"]))
    lon = float(rng.uniform(*p["lon"]))
    epsg, east, north = utm_forward(lat, lon)
    half = size * GSD_M / 2.0
    x0 = round((east - half) / GSD_M) * GSD_M
    y0 = round((north + half) / GSD_M) * GSD_M
    year = int(rng.integers(2018, 2024))
    day = dt.date(year, int(rng.integers(*p["season"])), int(rng.integers(1, 28)))
    asc_view = any(not v.endswith("_desc") for v in views if v.startswith("post"))
    hour, minute = (17, int(rng.integers(0, 60))) if asc_view else (5, int(rng.integers(0, 60)))
    clock = f"T{hour:02d}:{minute:02d}:00"
    meta = SampleMeta(
        chip_id=f"syn-{domain}-{seed}",
        event=event_name(domain, seed),
        source="synthetic",
        units="db",
        split=None,
        crs=_crs_wkt(epsg),
        transform=(GSD_M, 0.0, float(x0), 0.0, -GSD_M, float(y0)),
        date=f"{day.isoformat()}T{hour:02d}:{minute:02d}:00",
        # one Sentinel-1 repeat cycle (12 days) between the pre- and post-event passes
        dates={
            v: f"{(day - dt.timedelta(days=12) if v.startswith('pre') else day).isoformat()}{clock}"
            for v in views
        },
        lat=lat,
        lon=lon,
        extra={
            "domain": domain,
            "target": target,
            "theta_asc": round(theta["asc"], 2),
            "theta_desc": round(theta["desc"], 2),
        },
    )
    return Sample(views=out, mask=mask, meta=meta)


def parse_splits(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> mapping; fractions must be positive and sum to 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, frac = part.partition("=")
        try:
            out[name.strip()] = float(frac) if frac else 1.0
        except ValueError as err:
            raise ConfigError(f"splits: cannot read {part!r} (expected name=fraction)") from err
    if any(v <= 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise ConfigError(f"splits: fractions must be positive and sum to 1, got {text!r}")
    return out


def write_folder_dataset(
    out_dir: str | Path,
    n: int,
    size: int,
    domain: str = "in",
    seed: int = 0,
    splits: dict[str, float] | None = None,
    views: Sequence[str] = ("pre", "post"),
    bands: Sequence[str] = ("vv", "vh"),
    target: str = "flood",
) -> dict[str, int]:
    """Write `n` scenes in the folder layout (georeferenced GeoTIFFs); returns chips per split.

    Scene i uses seed ``seed * 100003 + i``; all scenes of one call share the event name, so one ood
    call is one unseen event.
    """
    from floodlora.data.sources.folder import write_dataset_yaml, write_sample

    if n < 1:
        raise ConfigError(f"synth: --n must be >= 1, got {n}")
    splits = splits or {"train": 0.8, "val": 0.1, "test": 0.1}
    names = list(splits)
    bounds = np.cumsum([splits[s] for s in names]) * n
    out = Path(out_dir)
    counts = dict.fromkeys(names, 0)
    event = event_name(domain, seed)
    for i in range(n):
        split = names[int(np.searchsorted(bounds, i + 0.5))]
        s = generate_scene(size, domain, seed * 100003 + i, views, bands, target)
        s.meta.event = event
        s.meta.chip_id = f"syn-{domain}-s{seed}-{i:04d}"
        write_sample(s, out / split / s.meta.chip_id, list(bands))
        counts[split] += 1
    write_dataset_yaml(
        out,
        "db",
        list(views),
        list(bands),
        event,
        generator={
            "name": "floodlora.synthetic",
            "domain": domain,
            "seed": seed,
            "n": n,
            "size": size,
            "target": target,
        },
    )
    return counts
