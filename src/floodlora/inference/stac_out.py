"""STAC metadata for `map` outputs: one Item per map folder, one Collection over many areas.

Why: a responder shares a folder with people who have no Python. A STAC Item next to the files lets
a catalogue, STAC Browser or QGIS find every output (class COG, probability, confidence, polygons,
quicklook, summary, the viewer) with its role and media type, and trace it back to the Sentinel-1
items and the model it was derived from (``derived_from`` links).

The Item is built from ``summary.json`` and the files it lists (``summary['files']``), so a new
output that `map` lists there becomes an asset without a change here. Geometry, bbox and the
projection fields come from the map raster through rio-stac. :func:`validate_stac` checks Items and
Collections against JSON schemas vendored in ``floodlora/assets/stac-schemas`` (no network).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from floodlora.errors import FloodLoraError

ITEM_JSON = "item.json"
COLLECTION_JSON = "collection.json"
STAC_VERSION = "1.1.0"
PROJECTION_V1_1 = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF = "image/tiff; application=geotiff"

# Which raster carries the item's footprint and projection: the class raster when `map` writes one.
FOOTPRINT_KEYS = ("classes", "class", "mask")

_MEDIA = {
    ".gpkg": "application/geopackage+sqlite3",
    ".geojson": "application/geo+json",
    ".fgb": "application/vnd.flatgeobuf",
    ".shp": "application/vnd.shp",
    ".png": "image/png",
    ".json": "application/json",
    ".html": "text/html",
    ".csv": "text/csv",
}
_ROLES = {
    "pre": ["source"],
    "post": ["source"],
    "fetch": ["metadata"],
    "quicklook": ["overview"],
    "viewer": ["metadata"],
    "summary": ["metadata"],
    "confidence": ["data", "quality"],
    "uncertainty": ["data", "quality"],
}
_TITLES = {
    "pre": "pre-event Sentinel-1 VV/VH (dB) on the map grid",
    "post": "post-event Sentinel-1 VV/VH (dB) on the map grid",
    "fetch": "the scenes searched and used (fetch.json)",
    "mask": "flood mask: 0 dry, 1 flood, 255 nodata",
    "classes": "classes: 0 dry, 1 flood, 2 reference water, 3 excluded, 255 nodata",
    "probability": "flood probability",
    "confidence": "confidence of the class",
    "polygons": "flood polygons with area_km2",
    "quicklook": "quicklook: post-event VV, flood in blue, scale bar",
    "viewer": "offline web map (open index.html from disk)",
    "summary": "summary: flooded km2, scenes, model, threshold",
}


class StacValidationError(FloodLoraError):
    """A STAC document that does not satisfy its schema (or names a schema that is not vendored)."""


def _media_type(path: Path) -> str | None:
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as ds:
            layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "")
        return COG if layout.upper() == "COG" else GEOTIFF
    return _MEDIA.get(path.suffix.lower())


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _asset(out_dir: Path, key: str, rel: str) -> Any:
    import pystac

    path = out_dir / rel
    return pystac.Asset(
        href=f"./{rel}",
        title=_TITLES.get(key, key),
        media_type=_media_type(path),
        roles=_ROLES.get(key, ["data"] if path.suffix.lower() != ".json" else ["metadata"]),
    )


def _scene_links(out_dir: Path, summary: Mapping[str, Any]) -> list[Any]:
    """`derived_from` links to each Sentinel-1 item the scenes were read from (fetch.json)."""
    import pystac

    fetch_rel = summary.get("files", {}).get("fetch")
    described: dict[str, list[dict[str, Any]]] = {}
    if fetch_rel and (out_dir / fetch_rel).is_file():
        info = json.loads((out_dir / fetch_rel).read_text())
        described = {k: info[k]["items"] for k in ("pre", "post") if isinstance(info.get(k), dict)}
    else:  # only the ids are known
        described = {k: [{"id": i} for i in v.get("items", [])] for k, v in summary.get("scenes", {}).items()}
    links = []
    for when, items in described.items():
        for item in items:
            href = item.get("href") or next(iter(item.get("hrefs", {}).values()), None) or item["id"]
            link = pystac.Link(
                "derived_from", href, media_type="application/geo+json" if item.get("href") else None,
                title=f"{when}-event Sentinel-1 item {item['id']}",
            )  # fmt: skip
            link.extra_fields["floodlora:scene"] = when
            links.append(link)
    return links


def _model_link(summary: Mapping[str, Any]) -> Any | None:
    """A `derived_from` link to the model's weights (with their sha256), when a model was used."""
    import pystac

    model = summary.get("model")
    if not isinstance(model, Mapping) or not model.get("run"):
        return None
    run = Path(model["run"])
    weights = run / "weights.safetensors"
    link = pystac.Link(
        "derived_from", (weights if weights.is_file() else run).as_uri(), title=f"model: floodlora run {run}"
    )
    if model.get("sha256"):
        link.extra_fields["floodlora:sha256"] = model["sha256"]
    return link


def build_item(out_dir: str | Path, summary: Mapping[str, Any], item_id: str | None = None) -> Any:
    """A pystac Item over the map folder `out_dir`: every file in ``summary['files']`` is an asset."""
    from rio_stac.stac import create_stac_item

    out_dir = Path(out_dir)
    files: Mapping[str, str] = summary.get("files", {})
    key = next((k for k in FOOTPRINT_KEYS if k in files), None)
    if key is None:
        raise StacValidationError(f"{out_dir}: summary lists no map raster ({' / '.join(FOOTPRINT_KEYS)})")
    scenes = summary.get("scenes") or {}
    post = _parse_time((scenes.get("post") or {}).get("datetime"))
    pre = _parse_time((scenes.get("pre") or {}).get("datetime"))
    when = post or dt.datetime.fromisoformat(str(summary["date"])).replace(tzinfo=dt.UTC)
    properties: dict[str, Any] = {
        "title": f"flood map {summary.get('date', '')}",
        "constellation": "sentinel-1",
        "instruments": ["c-sar"],
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "floodlora:flood_date": str(summary.get("date", "")),
    }
    if pre and post:
        properties["start_datetime"] = pre.strftime("%Y-%m-%dT%H:%M:%SZ")
        properties["end_datetime"] = post.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in ("flooded_km2", "flooded_km2_pixels", "polygons", "valid_fraction", "threshold"):
        if summary.get(name) is not None:
            properties[f"floodlora:{name}"] = summary[name]
    item = create_stac_item(
        str(out_dir / files[key]), input_datetime=when, id=item_id or out_dir.resolve().name,
        properties=properties, asset_name=key, asset_href=f"./{files[key]}", asset_roles=["data"],
        asset_media_type=_media_type(out_dir / files[key]), with_proj=True, geom_densify_pts=21,
    )  # fmt: skip
    item.assets[key].title = _TITLES.get(key, key)
    for name, rel in files.items():
        if name != key and name != "stac_item" and (out_dir / rel).is_file():
            item.add_asset(name, _asset(out_dir, name, rel))
    if (out_dir / "summary.json").is_file():
        item.add_asset("summary", _asset(out_dir, "summary", "summary.json"))
    for link in [*_scene_links(out_dir, summary), _model_link(summary)]:
        if link is not None:
            item.add_link(link)
    return item


def write_item(out_dir: str | Path, summary: Mapping[str, Any], item_id: str | None = None) -> Path:
    """Write ``OUT/item.json`` (relative asset hrefs, so the folder can move), atomically."""
    from floodlora.io import atomic_write_json

    out_dir = Path(out_dir)
    item = build_item(out_dir, summary, item_id)
    path = out_dir / ITEM_JSON
    atomic_write_json(path, item.to_dict(include_self_link=False, transform_hrefs=False))
    return path


def write_collection(
    root: str | Path,
    item_paths: Iterable[Path],
    collection_id: str,
    description: str,
    assets: Mapping[str, str] | None = None,
) -> Path:
    """``ROOT/collection.json`` linking the items (relative hrefs) with their joint extent.

    `assets` (key -> path relative to ROOT) adds collection-level files such as the km2 tables.
    """
    import pystac

    from floodlora.io import atomic_write_json

    root = Path(root)
    items = [(Path(p), json.loads(Path(p).read_text())) for p in item_paths]
    if items:
        boxes = [d["bbox"] for _, d in items]
        bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                max(b[3] for b in boxes)]  # fmt: skip
        times = [
            _parse_time(d["properties"].get(k) or d["properties"].get("datetime"))
            for _, d in items
            for k in ("start_datetime", "end_datetime")
        ]
        interval = [min(t for t in times if t), max(t for t in times if t)]
    else:
        bbox, interval = [-180.0, -90.0, 180.0, 90.0], [None, None]
    collection = pystac.Collection(
        id=collection_id, description=description, license="other",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval])),
        title="floodlora flood maps",
    )  # fmt: skip
    collection.add_link(pystac.Link("root", f"./{COLLECTION_JSON}", media_type="application/json"))
    for path, d in items:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        collection.add_link(pystac.Link("item", f"./{rel}", media_type="application/geo+json", title=d["id"]))
    for key, rel in (assets or {}).items():
        collection.add_asset(key, _asset(root, key, rel))
    path = root / COLLECTION_JSON
    atomic_write_json(path, collection.to_dict(include_self_link=False, transform_hrefs=False))
    return path


# --------------------------------------------------------------------------------------------------
# offline validation
# --------------------------------------------------------------------------------------------------


def _schema_urls() -> dict[str, str]:
    """Vendored file (relative to assets/stac-schemas) -> the URL it is published at."""
    base = f"https://schemas.stacspec.org/v{STAC_VERSION}"
    urls = {f"geojson/{n}.json": f"https://geojson.org/schema/{n}.json" for n in ("Feature", "Geometry")}
    for name in ("item", "catalog", "collection"):
        urls[f"stac-spec/v{STAC_VERSION}/{name}.json"] = f"{base}/{name}-spec/json-schema/{name}.json"
    for name in ("bands", "basics", "common", "data-values", "datetime", "instrument", "licensing",
                 "provider"):  # fmt: skip
        urls[f"stac-spec/v{STAC_VERSION}/{name}.json"] = f"{base}/item-spec/json-schema/{name}.json"
    urls["projection/v1.1.0/schema.json"] = PROJECTION_V1_1
    return urls


@lru_cache(maxsize=1)
def _registry() -> Any:
    from importlib import resources

    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    root = resources.files("floodlora") / "assets" / "stac-schemas"

    def refuse(uri: str) -> Any:
        raise StacValidationError(f"schema {uri} is not vendored in floodlora/assets/stac-schemas")

    pairs = [
        (url, Resource.from_contents(json.loads((root / rel).read_text()), default_specification=DRAFT7))
        for rel, url in _schema_urls().items()
    ]
    return Registry(retrieve=refuse).with_resources(pairs)  # type: ignore[call-arg]


def validate_stac(doc: Mapping[str, Any]) -> None:
    """Check a STAC Item / Collection / Catalog dict against its core schema and its extensions.

    Raises:
        StacValidationError: naming the document, the JSON path and the first problems.
    """
    from jsonschema import Draft7Validator

    kind = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}.get(doc.get("type", ""))
    if kind is None:
        raise StacValidationError(f"not a STAC document: type {doc.get('type')!r}")
    core = f"https://schemas.stacspec.org/v{STAC_VERSION}/{kind}-spec/json-schema/{kind}.json"
    problems = []
    vendored = set(_schema_urls().values())
    for url in [core, *doc.get("stac_extensions", [])]:
        if url not in vendored:
            raise StacValidationError(
                f"STAC {kind} {doc.get('id')}: schema {url} is not vendored in floodlora/assets/stac-schemas"
            )
        validator = Draft7Validator({"$ref": url}, registry=_registry())
        try:
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        except Exception as err:  # a $ref to a schema that is not vendored (never fetched)
            raise StacValidationError(f"STAC {kind} {doc.get('id')}: {url}: {err}") from None
        problems += [f"{url}: /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    if problems:
        raise StacValidationError(f"STAC {kind} {doc.get('id')} is invalid: " + "; ".join(problems[:3]))
