"""`floodlora map --areas FILE`: many areas (and dates) mapped as Dask tasks, resumable.

Why Dask distributed rather than a loop or a home-made pool: the same code runs on a laptop (a
``LocalCluster`` sized to the machine) and on a cluster a responder already has
(``--scheduler tcp://HOST:PORT``), with Dask's worker memory limits, retries of lost workers and
dashboard. Each area is one task that calls :func:`floodlora.inference.mapping.run_map` into
``OUT/areas/<id>/``, so memory per task is what `map` needs for one area (`predict` streams tiles),
and the model is whatever `run_map` is given (``--model`` or none).

    OUT/areas/<id>/...        one `map` folder per area (item.json written last: the area is done)
    OUT/collection.json       STAC Collection linking every finished area's item.json
    OUT/areas.csv, areas.gpkg km2 per area and class, status and failure reason per area
    OUT/areas.json            the same, with timings and how the run was scheduled

A rerun skips areas whose folder holds an ``item.json`` for the same bbox and date (resume); an
area that failed is tried again. The failure of one area is recorded with its reason and does not
stop the others.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from floodlora.errors import ConfigError, FloodLoraError

AREAS_DIR = "areas"
STATUS_JSON = "areas.json"
TABLE_CSV = "areas.csv"
TABLE_GPKG = "areas.gpkg"
CONNECT_TIMEOUT_S = 10.0
GB_PER_WORKER = 4.0  # what one `map` task may need (predict's peak at cpu-small tiles, with headroom)
_VECTOR = (".gpkg", ".geojson", ".json", ".fgb", ".shp")


@dataclass
class Area:
    """One row of the areas file: where (WGS 84 bbox), when, and its output folder name."""

    id: str
    bbox: tuple[float, float, float, float]
    date: str
    folder: str = ""


@dataclass
class AreasResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    collection: Path
    tables: list[Path]
    scheduler: str
    workers: int
    wall_s: float
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# reading the areas
# --------------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "area"


def _check_bbox(path: Path, name: str, bbox: Sequence[float]) -> tuple[float, float, float, float]:
    w, s, e, n = (float(v) for v in bbox)
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(
            f"--areas {path}: area {name}: bbox {w:g},{s:g},{e:g},{n:g} is empty or not in degrees"
        )
    return w, s, e, n


def _vector_rows(path: Path) -> list[tuple[dict[str, Any], tuple[float, float, float, float] | None]]:
    import numpy as np
    import pyogrio
    import shapely
    from pyproj import CRS, Transformer

    try:
        meta, _, wkb, fields = pyogrio.raw.read(path)
    except Exception as err:
        raise ConfigError(f"--areas {path}: cannot read it ({err})") from None
    if wkb is None or meta.get("geometry_type") in (None, "None") or not len(wkb):
        raise ConfigError(f"--areas {path}: no geometry (the layer has no geometry column or no rows)")
    geoms = shapely.from_wkb(wkb)
    crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else CRS.from_epsg(4326)
    if not crs.equals(CRS.from_epsg(4326)):
        to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    rows = []
    for i, geom in enumerate(geoms):
        values = [v[i].item() if hasattr(v[i], "item") else v[i] for v in fields]
        props = {str(k).lower(): v for k, v in zip(meta["fields"], values, strict=True)}
        empty = geom is None or shapely.is_empty(geom)
        rows.append((props, None if empty else tuple(shapely.bounds(geom).tolist())))
    return rows


def _csv_rows(path: Path) -> list[tuple[dict[str, Any], tuple[float, float, float, float] | None]]:
    import shapely

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower() for c in reader.fieldnames or []}
        records = [{str(k).strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not ({"west", "south", "east", "north"} <= columns or columns & {"bbox", "wkt", "geometry"}):
        raise ConfigError(
            f"--areas {path}: no geometry (columns: {', '.join(sorted(columns)) or 'none'}); give a bbox "
            "column (W,S,E,N), west/south/east/north columns, or a wkt column in WGS 84"
        )
    rows = []
    for r in records:
        box: tuple[float, float, float, float] | None = None
        try:
            if r.get("bbox"):
                box = tuple(float(v) for v in r["bbox"].replace(" ", "").split(","))  # type: ignore[assignment]
            elif r.get("wkt") or r.get("geometry"):
                box = tuple(shapely.bounds(shapely.from_wkt(r.get("wkt") or r["geometry"])).tolist())
            elif all(r.get(k) for k in ("west", "south", "east", "north")):
                box = (float(r["west"]), float(r["south"]), float(r["east"]), float(r["north"]))
        except (ValueError, shapely.errors.GEOSException) as err:
            raise ConfigError(f"--areas {path}: row {r}: unreadable geometry ({err})") from None
        rows.append((r, box))
    return rows


def read_areas(path: str | Path, date: str | None = None) -> list[Area]:
    """Areas from a GeoPackage / GeoJSON / FlatGeobuf / Shapefile (any CRS) or a CSV, one per row.

    The id comes from an ``id``, ``name`` or ``area`` column (else the row number), the date from a
    ``date`` column (else `date`). The output folder is the id, or id_date when an id repeats.

    Raises:
        ConfigError: no such file, no geometry, a row without geometry or date, duplicate areas.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--areas {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in _VECTOR:
        rows = _vector_rows(path)
    else:
        raise ConfigError(
            f"--areas {path}: expected .gpkg, .geojson, .fgb, .shp or .csv, not {suffix or 'none'}"
        )
    if not rows:
        raise ConfigError(f"--areas {path}: no areas (the file has no rows)")
    areas = []
    for i, (props, box) in enumerate(rows, start=1):
        name = next(
            (str(props[k]) for k in ("id", "name", "area") if props.get(k) not in (None, "")), f"area-{i:03d}"
        )
        if box is None:
            raise ConfigError(f"--areas {path}: area {name} (row {i}) has no geometry")
        when = str(props.get("date") or date or "")[:10]
        if not when:
            raise ConfigError(
                f"--areas {path}: area {name} (row {i}) has no date; add a date column or pass --date"
            )
        areas.append(Area(_safe(name), _check_bbox(path, name, box), when))
    counts: dict[str, int] = {}
    for a in areas:
        counts[a.id] = counts.get(a.id, 0) + 1
    for a in areas:
        a.folder = a.id if counts[a.id] == 1 else f"{a.id}_{a.date}"
    folders = [a.folder for a in areas]
    if len(set(folders)) != len(folders):
        dup = next(f for f in folders if folders.count(f) > 1)
        raise ConfigError(f"--areas {path}: area {dup} appears twice with the same date")
    return areas


# --------------------------------------------------------------------------------------------------
# one area = one task
# --------------------------------------------------------------------------------------------------


def area_done(area_dir: Path, area: Area) -> bool:
    """Finished before: the folder's item.json exists and its summary is for this bbox and date."""
    from floodlora.inference.stac_out import ITEM_JSON

    summary = area_dir / "summary.json"
    if not (area_dir / ITEM_JSON).is_file() or not summary.is_file():
        return False
    try:
        s = json.loads(summary.read_text())
    except (OSError, ValueError):
        return False
    same_box = all(
        math.isclose(a, b, abs_tol=1e-9) for a, b in zip(s.get("bbox", []), area.bbox, strict=False)
    )
    return str(s.get("date")) == area.date and len(s.get("bbox", [])) == 4 and same_box


def _km2(area_dir: Path, summary: Mapping[str, Any]) -> dict[str, float]:
    from floodlora.inference.legend import class_km2

    files = summary.get("files", {})
    key = next((k for k in ("classes", "class", "mask") if k in files), None)
    return class_km2(area_dir / files[key]) if key else {}


def _base_row(area: Area) -> dict[str, Any]:
    return {"id": area.id, "folder": area.folder, "date": area.date, "bbox": list(area.bbox)}


def map_area(
    area: Area, out_root: str, options: Mapping[str, Any], threads: int | None = None
) -> dict[str, Any]:
    """The Dask task: `run_map` for one area; never raises, so one failure stops no other area."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from floodlora.inference.mapping import run_map

    area_dir = Path(out_root) / AREAS_DIR / area.folder
    row: dict[str, Any] = {**_base_row(area), "worker_pid": os.getpid()}
    start = time.perf_counter()
    try:
        bbox = ",".join(repr(v) for v in area.bbox)
        result = run_map(bbox, area.date, area_dir, options.get("model"), progress=False,
                         **{k: v for k, v in options.items() if k != "model"})  # fmt: skip
        row.update(status="ok", reason="", km2=_km2(area_dir, result.summary),
                   flooded_km2=result.summary.get("flooded_km2"))  # fmt: skip
    except FloodLoraError as err:
        row.update(status="failed", reason=str(err))
    except Exception as err:  # recorded, not raised: the other areas go on
        row.update(status="failed", reason=f"{type(err).__name__}: {err}")
    row["seconds"] = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------------------------------


def default_workers() -> int:
    """One worker per core, fewer when memory cannot give each :data:`GB_PER_WORKER`."""
    import psutil

    cores = os.cpu_count() or 1
    by_memory = int(psutil.virtual_memory().total / 1e9 // GB_PER_WORKER)
    return max(1, min(cores, by_memory))


def open_client(scheduler: str | None, workers: int | None) -> tuple[Any, Any, int, int | None]:
    """(client, local cluster or None, workers, torch threads per task) for `scheduler` or a LocalCluster.

    Raises:
        ConfigError: the scheduler did not answer within :data:`CONNECT_TIMEOUT_S`.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--areas needs Dask distributed: pip install 'floodlora[distributed]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"--scheduler {scheduler}: no Dask scheduler answered within "
                f"{CONNECT_TIMEOUT_S:g} s ({reason})"
            ) from None
        n = len(client.scheduler_info().get("workers", {})) or 1
        return client, None, n, None
    import psutil

    n = workers or default_workers()
    threads = max(1, (os.cpu_count() or 1) // n)
    memory = int(psutil.virtual_memory().total / n)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=memory,
                           dashboard_address=None)  # fmt: skip
    return Client(cluster), cluster, n, threads


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def _class_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from floodlora.inference.legend import CLASS_NAMES

    seen = {k for r in rows for k in (r.get("km2") or {})}
    known = [n for n in CLASS_NAMES.values() if n in seen or n in ("dry", "flood")]
    return known + sorted(seen - set(known))


def write_tables(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``areas.csv`` and ``areas.gpkg`` (bbox polygons, WGS 84): km2 per area and class, status, reason."""
    import numpy as np
    import pyogrio
    import shapely

    from floodlora.inference.vector import atomic_vector_path
    from floodlora.io import atomic_write_text

    classes = _class_columns(rows)
    header = [
        "id",
        "date",
        "status",
        "reason",
        "seconds",
        *(f"km2_{c}" for c in classes),
        "flooded_km2_polygons",
    ]
    table = []
    for r in rows:
        km2 = r.get("km2") or {}
        seconds = round(float(r.get("seconds") or 0), 3)
        table.append([r["id"], r["date"], r["status"], r.get("reason", ""), seconds,
                      *(km2.get(c, 0.0 if r["status"] != "failed" else None) for c in classes),
                      r.get("flooded_km2")])  # fmt: skip
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in table])
    atomic_write_text(out_dir / TABLE_CSV, text.getvalue())
    geoms = shapely.to_wkb(np.array([shapely.box(*r["bbox"]) for r in rows], dtype=object))
    fields = []
    for j, name in enumerate(header):
        column = [row[j] for row in table]
        if name in ("id", "date", "status", "reason"):
            fields.append(np.array([str(v) for v in column], dtype=object))
        else:
            fields.append(np.array([np.nan if v is None else float(v) for v in column], dtype=np.float64))
    with atomic_vector_path(out_dir / TABLE_GPKG) as tmp:
        pyogrio.raw.write(tmp, geoms, fields, fields=header, driver="GPKG", layer="areas",
                          geometry_type="Polygon", crs="EPSG:4326")  # fmt: skip
    return [out_dir / TABLE_CSV, out_dir / TABLE_GPKG]


def run_areas(
    areas_file: str | Path,
    out: str | Path,
    *,
    date: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    echo: Any = None,
    **map_options: Any,
) -> AreasResult:
    """Map every area of `areas_file` under `out` on Dask; skip finished ones; record failures.

    `map_options` are `run_map`'s keyword options (model, catalog, collection, pre_days, threshold,
    polygons, simplify, min_area); `echo` (a callable) gets one line per finished area.
    """
    from floodlora.inference.stac_out import ITEM_JSON, write_collection
    from floodlora.io import atomic_write_json

    start = time.perf_counter()
    out_dir = Path(out)
    areas = read_areas(areas_file, date)
    say = echo or (lambda line: None)
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for area in areas:
        area_dir = out_dir / AREAS_DIR / area.folder
        if area_done(area_dir, area):
            summary = json.loads((area_dir / "summary.json").read_text())
            rows[area.folder] = {**_base_row(area), "status": "skipped", "reason": "finished before",
                                 "seconds": 0.0, "km2": _km2(area_dir, summary),
                                 "flooded_km2": summary.get("flooded_km2")}  # fmt: skip
            say(f"{area.folder}: finished before, skipped")
        else:
            todo.append(area)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_workers, where = 0, scheduler or "LocalCluster"
    if todo:
        from dask.distributed import as_completed

        client, cluster, n_workers, threads = open_client(scheduler, workers)
        where = scheduler or f"LocalCluster({n_workers} workers x 1 task, {threads} torch threads each)"
        try:
            options = dict(map_options)
            futures = {
                client.submit(
                    map_area, a, str(out_dir), options, threads, key=f"map-{a.folder}", pure=False
                ): a
                for a in todo
            }
            for future in as_completed(futures):
                area = futures[future]
                try:
                    row = future.result()
                except Exception as err:  # a worker died (memory limit, crash)
                    reason = f"{type(err).__name__}: {err}"
                    row = {**_base_row(area), "status": "failed", "reason": reason, "seconds": None}
                rows[area.folder] = row
                what = (f"{row.get('flooded_km2') or 0:.3f} km2 flooded" if row["status"] == "ok"
                        else f"failed: {row['reason']}")  # fmt: skip
                say(f"{area.folder}: {what} ({row.get('seconds') or 0:.1f} s)")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    ordered = [rows[a.folder] for a in areas]
    tables = write_tables(out_dir, ordered)
    items = [
        out_dir / AREAS_DIR / r["folder"] / ITEM_JSON for r in ordered if r["status"] in ("ok", "skipped")
    ]
    collection = write_collection(
        out_dir, items, _safe(out_dir.resolve().name),
        f"floodlora flood maps of the areas in {Path(areas_file).name}",
        assets={"km2_table": TABLE_CSV, "km2_table_gpkg": TABLE_GPKG, "status": STATUS_JSON},
    )  # fmt: skip
    wall = time.perf_counter() - start
    status = {"areas_file": str(areas_file), "scheduler": where, "workers": n_workers, "wall_s": wall,
              "areas": [{k: v for k, v in r.items()} for r in ordered]}  # fmt: skip
    atomic_write_json(out_dir / STATUS_JSON, status)
    return AreasResult(out_dir, ordered, collection, tables, where, n_workers, wall)


def format_areas(result: AreasResult) -> str:
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("ok", "skipped", "failed")}
    lines = [f"{counts['ok']} mapped, {counts['skipped']} finished before, {counts['failed']} failed "
             f"on {result.scheduler} in {result.wall_s:.1f} s"]  # fmt: skip
    lines += [f"failed: {r['folder']}: {r['reason']}" for r in result.rows if r["status"] == "failed"]
    lines.append(f"wrote {result.out_dir}: {AREAS_DIR}/, {result.collection.name}, "
                 + ", ".join(p.name for p in result.tables) + f", {STATUS_JSON}")  # fmt: skip
    return "\n".join(lines)
