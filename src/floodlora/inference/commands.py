"""The `predict` and `export` commands: parse the CLI's strings, call the library, format a summary."""

from __future__ import annotations

from pathlib import Path

from floodlora.errors import ConfigError
from floodlora.inference.classes import ClassOptions


def format_classes(km2: dict[str, float]) -> str:
    """One line: km2 per class."""
    return "classes: " + ", ".join(f"{name.replace('_', ' ')} {v:.3f} km2" for name, v in km2.items())


def class_options(
    classes: str | None = None,
    confidence: str | None = None,
    confidence_tta: bool = False,
    reference_water: str | None = None,
    reference_threshold: float = 50.0,
    dem: str | None = None,
    hand_max: float | None = 15.0,
    slope_max: float | None = 15.0,
    shadow_layover: bool = True,
    incidence_angle: float | None = None,
    orbit_state: str | None = None,
    pre_water: str = "auto",
    pre_water_threshold: float | None = None,
) -> ClassOptions:
    """The CLI's class flags -> ClassOptions (local files only; `map` adds STAC layers)."""
    from floodlora.data.terrain import TerrainOptions

    for flag, path in (("--reference-water", reference_water), ("--dem", dem)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    terrain = TerrainOptions(
        hand_max_m=hand_max, slope_max_deg=slope_max, shadow_layover=shadow_layover,
        incidence_deg=incidence_angle, orbit_state=orbit_state,
    )  # fmt: skip
    return ClassOptions(
        classes_path=Path(classes) if classes else None,
        confidence_path=Path(confidence) if confidence else None,
        confidence_spread=confidence_tta,
        reference_water=[reference_water] if reference_water else [],
        reference_threshold=reference_threshold,
        dem=[dem] if dem else [],
        terrain=terrain,
        pre_water=pre_water,
        pre_water_threshold=pre_water_threshold,
    )


def parse_views(items: list[str]) -> dict[str, str]:
    """``["post=a.tif", "pre=b.tif"]`` -> mapping; a malformed or repeated item is a user error."""
    views: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--view {item!r}: expected NAME=PATH, e.g. --view post=S1_post.tif")
        if name in views:
            raise ConfigError(f"--view {name} given twice")
        views[name] = path
    return views


def parse_dates(items: list[str] | str | None) -> tuple[str | None, dict[str, str]]:
    """``["post=2021-05-01", "pre=2021-04-19"]`` -> (None, per-view dates); a bare date is the post one."""
    if isinstance(items, str):
        items = [items]
    post: str | None = None
    dates: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            if post is not None:
                raise ConfigError(f"--date {item!r}: a bare date is the post-event one, given twice")
            post = item.strip()
            continue
        name = name.strip()
        if not name or not value.strip():
            raise ConfigError(f"--date {item!r}: expected VIEW=DATE, e.g. --date pre=2021-04-19")
        if name in dates:
            raise ConfigError(f"--date {name} given twice")
        dates[name] = value.strip()
    return post, dates


def run_predict(
    run_dir: str,
    view: list[str],
    out: str,
    *,
    probabilities: str | None = None,
    uncertainty: str | None = None,
    polygons: str | None = None,
    adapter: str | None = None,
    checkpoint: str | None = None,
    units: str = "db",
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    threshold: float | None = None,
    tta: bool = False,
    mc_dropout: int = 0,
    date: list[str] | str | None = None,
    align: bool = True,
    cog: bool = True,
    progress: bool = True,
    simplify: float | None = None,
    min_area: float | None = None,
    precision: str = "auto",
    target: str | None = None,
    classes: ClassOptions | None = None,
) -> str:
    """Run :func:`floodlora.inference.predict.predict_run` and describe what was written."""
    from floodlora.inference.predict import PredictOptions, predict_run

    post_date, dates = parse_dates(date)
    opts = PredictOptions(
        tile=tile, overlap=overlap, batch_size=batch_size, threshold=threshold, tta=tta,
        mc_samples=mc_dropout, units=units, align=align, cog=cog, date=post_date, dates=dates,
        progress=progress, simplify_m=simplify, min_area_m2=min_area,
        precision=precision, target=target, classes=classes,
    )  # fmt: skip
    res = predict_run(
        run_dir, parse_views(view), out, probabilities=probabilities, uncertainty=uncertainty,
        polygons=polygons, adapter=adapter, checkpoint=checkpoint, options=opts,
    )  # fmt: skip
    lines = [f"note: {m}" for m in res.messages] + [f"warning: {m}" for m in res.warnings]
    valid_pct = 100.0 * res.valid_pixels / max(res.height * res.width, 1)
    lines.append(
        f"scene {res.width}x{res.height} px, {res.tiles} tiles of {res.tile} px (overlap {res.overlap}), "
        f"{valid_pct:.1f}% valid, {res.timings['total']:.1f} s"
    )
    area = f"{res.flooded_km2:.3f} km2" if res.flooded_km2 is not None else "area unknown (no CRS)"
    lines.append(f"flooded: {res.flooded_pixels} px = {area}")
    if res.classes is not None and res.classes["classes_km2"] is not None:
        lines.append(format_classes(res.classes["classes_km2"]))
    lines.append(f"wrote {res.out}")
    extra = (classes.classes_path, classes.confidence_path) if classes is not None else ()
    for path in (res.probabilities, res.uncertainty, *extra):
        if path is not None:
            lines.append(f"wrote {path}")
    if res.polygons is not None:
        lines.append(f"wrote {res.polygons}: {res.polygon_count} polygons, {res.polygon_km2:.3f} km2")
    return "\n".join(lines)


def run_export(
    run_dir: str,
    out: str,
    merge: bool = False,
    adapter: str | None = None,
    torch_export: bool = False,
    onnx: bool = False,
    tile: int | None = None,
    checkpoint: str | None = None,
) -> str:
    """Run :func:`floodlora.inference.export.export_run` and list the artefacts with their checks."""
    from floodlora.inference.export import export_run

    rep = export_run(
        run_dir, out, merge=merge, adapter=adapter, torch_export=torch_export, onnx=onnx, tile=tile,
        checkpoint=checkpoint,
    )  # fmt: skip
    lines = [f"note: {m}" for m in rep.messages]
    if rep.merge_max_abs_diff is not None:
        lines.append(
            f"merged LoRA into the encoder: max |logit diff| vs unmerged = {rep.merge_max_abs_diff:.2e}"
        )
    if rep.torch_export_max_abs_diff is not None:
        lines.append(f"torch.export: max |diff| vs eager = {rep.torch_export_max_abs_diff:.2e}")
    if rep.onnx_max_abs_diff is not None:
        lines.append(f"ONNX (onnxruntime): max |diff| vs PyTorch = {rep.onnx_max_abs_diff:.2e}")
    lines += [f"wrote {p}" for p in rep.written]
    if merge:
        lines.append(f"predict with: floodlora predict {Path(out)} --view post=POST.tif --out FLOOD.tif")
    return "\n".join(lines)
