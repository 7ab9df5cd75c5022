"""floodlora's own GeoTIFF layout for users' data (documented in docs/data.md).

::

    <root>/dataset.yaml                  units, views, bands (and a default event; labels: flood | water)
    <root>/<split>/<chip>/<view>.tif     one GeoTIFF per view, bands in the declared order
    <root>/<split>/<chip>/mask.tif       optional uint8 label: 0 dry, 1 flood, 255 nodata
    <root>/<split>/<chip>/meta.yaml      optional: event, date (post-event), dates (view -> date), lat, lon

``<split>`` named train/val/test is a native split; any other name (e.g. ``chips``) leaves the split
to the DataModule. Georeferencing (CRS + transform) is read from the first view and carried through.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.config import DEFAULT_LABEL_KIND, LABEL_KINDS
from floodlora.data.sample import BANDS, UNITS, VIEWS, Sample, SampleMeta, check_sample
from floodlora.data.sources._common import ChipRef, binary_mask, center_latlon, read_tif, to_float
from floodlora.errors import DataError

FORMAT = "folder"
DATASET_FILE = "dataset.yaml"
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def detect(root: Path) -> bool:
    return (Path(root) / DATASET_FILE).is_file()


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path}: not readable YAML ({err.__class__.__name__})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping")
    return data


def load_dataset_yaml(root: Path) -> dict[str, Any]:
    """Read and check ``dataset.yaml``: units, views and bands must be known names."""
    path = Path(root) / DATASET_FILE
    spec = _load_yaml(path)
    units = spec.get("units")
    if units not in UNITS:
        raise DataError(f"{path}: units must be one of {', '.join(UNITS)}, got {units!r}")
    views = spec.get("views", ["pre", "post"])
    bands = spec.get("bands", ["vv", "vh"])
    if not isinstance(views, list) or not views or any(v not in VIEWS for v in views):
        raise DataError(f"{path}: views must be a list from {', '.join(VIEWS)}, got {views!r}")
    if not isinstance(bands, list) or not bands or any(b not in BANDS for b in bands):
        raise DataError(f"{path}: bands must be a list from {', '.join(BANDS)}, got {bands!r}")
    labels = spec.get("labels", DEFAULT_LABEL_KIND)
    if labels not in LABEL_KINDS:
        raise DataError(f"{path}: labels must be flood (new water) or water (all water), got {labels!r}")
    return {
        "units": units,
        "views": views,
        "bands": bands,
        "labels": labels,
        "event": str(spec.get("event", Path(root).name)),
    }


def _is_chip(path: Path) -> bool:
    return any(p.suffix.lower() in (".tif", ".tiff") for p in path.iterdir())


def discover(root: Path) -> list[ChipRef]:
    root = Path(root)
    spec = load_dataset_yaml(root)
    refs = []
    for top in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _is_chip(top):
            chips, split = [top], None
        else:
            chips = sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
            split = _SPLITS.get(top.name.lower())
        for chip in chips:
            files = {v: str(chip / f"{v}.tif") for v in spec["views"]}
            labelled = (chip / "mask.tif").is_file()
            if labelled:
                files["mask"] = str(chip / "mask.tif")
            event = spec["event"]
            extra: dict[str, Any] = {"views": spec["views"], "bands": spec["bands"], "labels": spec["labels"]}
            if (chip / "meta.yaml").is_file():
                meta = _load_yaml(chip / "meta.yaml")
                event = str(meta.get("event", event))
                extra["meta"] = {k: meta[k] for k in ("date", "dates", "lat", "lon") if k in meta}
                dates = extra["meta"].get("dates")
                if dates is not None and not (
                    isinstance(dates, dict) and all(isinstance(v, str | dt.date) for v in dates.values())
                ):
                    raise DataError(f"{chip / 'meta.yaml'}: dates must map view names to ISO dates")
            refs.append(ChipRef(chip.name, event, FORMAT, split, files, spec["units"], labelled, extra))
    return refs


def _band_order(descriptions: tuple[str | None, ...], declared: list[str], path: str) -> list[int]:
    """Band indices in declared order; band descriptions (VV/VH) win over position when present."""
    names = [d.lower() if d else None for d in descriptions]
    if all(names) and set(names) == set(declared):
        return [names.index(b) for b in declared]
    if all(names) and set(names) & set(BANDS) and set(names) != set(declared):
        raise DataError(
            f"{path}: bands are {', '.join(d or '?' for d in descriptions)}, dataset.yaml declares {declared}"
        )
    return list(range(len(declared)))


def read(ref: ChipRef) -> Sample:
    bands: list[str] = ref.extra["bands"]
    views: dict[str, dict[str, np.ndarray]] = {}
    geo = None
    for view in ref.extra["views"]:
        path = ref.files[view]
        r = read_tif(path, bands=len(bands))
        order = _band_order(r.descriptions, bands, path)
        views[view] = {b: to_float(r.data[i], r.nodata) for b, i in zip(bands, order, strict=True)}
        if geo is None:
            geo = r
    mask = None
    if "mask" in ref.files:
        lab = read_tif(ref.files["mask"], bands=1)
        mask = binary_mask(lab.data[0], ref.files["mask"], {0: 0, 1: 1, 255: 255})
    assert geo is not None
    known = ref.extra.get("meta", {})
    shape = geo.data.shape[1:]
    lat, lon = known.get("lat"), known.get("lon")
    if lat is None or lon is None:
        lat, lon = center_latlon(geo.crs, geo.transform, shape)
    meta = SampleMeta(
        chip_id=ref.chip_id,
        event=ref.event,
        source=FORMAT,
        units=ref.units,
        split=ref.split,
        crs=geo.crs,
        transform=geo.transform,
        date=str(known["date"]) if known.get("date") is not None else None,
        dates={str(v): str(d) for v, d in (known.get("dates") or {}).items()},
        lat=float(lat) if lat is not None else None,
        lon=float(lon) if lon is not None else None,
    )
    return check_sample(
        Sample(views=views, mask=mask, meta=meta), str(Path(ref.files[ref.extra["views"][0]]).parent)
    )


# --------------------------------------------------------------------------------------------------
# writing (used by `floodlora synth` and by users converting their own data)
# --------------------------------------------------------------------------------------------------


def write_dataset_yaml(
    root: str | Path, units: str, views: list[str], bands: list[str], event: str, **extra: Any
) -> None:
    """Write ``dataset.yaml`` atomically."""
    import yaml

    from floodlora.io import atomic_write_text

    spec = {
        "format": "floodlora-folder",
        "version": 1,
        "units": units,
        "views": list(views),
        "bands": list(bands),
    }
    spec["event"] = event
    spec.update(extra)
    atomic_write_text(Path(root) / DATASET_FILE, yaml.safe_dump(spec, sort_keys=False))


def write_sample(sample: Sample, chip_dir: str | Path, bands: list[str] | None = None) -> None:
    """Write one sample as ``<view>.tif`` (+ ``mask.tif``, ``meta.yaml``) GeoTIFFs, each atomically."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():  # chips without georeferencing are legitimate (OMBRIA, ETCI)
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        _write_sample(sample, Path(chip_dir), bands)


def _write_sample(sample: Sample, chip_dir: Path, bands: list[str] | None) -> None:
    import rasterio
    import yaml
    from rasterio.transform import Affine

    from floodlora.io import atomic_write_text, atomic_write_with

    chip_dir = Path(chip_dir)
    chip_dir.mkdir(parents=True, exist_ok=True)
    h, w = sample.shape
    m = sample.meta
    profile: dict[str, Any] = {"driver": "GTiff", "height": h, "width": w, "compress": "deflate"}
    if m.crs is not None:
        profile["crs"] = m.crs
    if m.transform is not None:
        profile["transform"] = Affine(*m.transform)

    for view, band_arrays in sample.views.items():
        names = bands or list(band_arrays)
        stack = np.stack([band_arrays[b] for b in names]).astype(np.float32)

        def _write(tmp: Path, stack: np.ndarray = stack, names: list[str] = names) -> None:
            with rasterio.open(
                tmp, "w", **profile, count=len(names), dtype="float32", nodata=float("nan")
            ) as ds:
                ds.write(stack)
                for i, b in enumerate(names, start=1):
                    ds.set_band_description(i, b.upper())

        atomic_write_with(chip_dir / f"{view}.tif", _write)

    if sample.mask is not None:
        mask = sample.mask

        def _write_mask(tmp: Path) -> None:
            with rasterio.open(tmp, "w", **profile, count=1, dtype="uint8", nodata=255) as ds:
                ds.write(mask[None])

        atomic_write_with(chip_dir / "mask.tif", _write_mask)
    meta: dict[str, Any] = {"event": m.event, "date": m.date, "lat": m.lat, "lon": m.lon}
    if m.dates:
        meta["dates"] = dict(m.dates)
    meta.update({k: v for k, v in m.extra.items() if isinstance(v, str | int | float | bool)})
    atomic_write_text(chip_dir / "meta.yaml", yaml.safe_dump(meta, sort_keys=False))
