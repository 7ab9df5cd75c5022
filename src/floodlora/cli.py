"""The `floodlora` command line: one thin function per command, no logic.

Heavy libraries are imported inside each command so that `floodlora --help` stays fast.
User errors (:class:`floodlora.errors.FloodLoraError`) become a one-line message and exit code 2.
"""

from __future__ import annotations

import errno
import sys
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from floodlora.errors import ConfigError
from floodlora.training.options import SELF_ADAPT as _SELF
from floodlora.training.options import AdaptOptions

_ADAPT = AdaptOptions()  # the adapt command's defaults, read from one place

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="floodlora",
    help="Rapid adaptation of Clay foundation models to Sentinel-1 flood segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


@app.command()
def synth(
    out: Annotated[str, typer.Option(help="Output folder (floodlora folder layout, GeoTIFFs).")],
    n: Annotated[int, typer.Option(help="Number of scenes.")] = 64,
    size: Annotated[int, typer.Option(help="Scene size in pixels (10 m).")] = 128,
    domain: Annotated[str, typer.Option(help="in (temperate valley) or ood (arid, shifted).")] = "in",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same scenes.")] = 0,
    splits: Annotated[str, typer.Option(help="Split fractions, e.g. train=0.8,val=0.1,test=0.1.")] = (
        "train=0.8,val=0.1,test=0.1"
    ),
    views: Annotated[str, typer.Option(help="Views, e.g. pre,post or pre_asc,post_asc.")] = "pre,post",
    target: Annotated[str, typer.Option(help="Label: flood (new water) or water (all).")] = "flood",
) -> None:
    """Write synthetic Sentinel-1 flood scenes (georeferenced GeoTIFFs) in the folder layout."""
    from floodlora.data.commands import run_synth

    typer.echo(run_synth(out, n, size, domain, seed, splits, views, target))


@app.command()
def labels(
    scene: Annotated[str, typer.Option(help="Post-event Sentinel-1 GeoTIFF (VV/VH) the polygons label.")],
    flood: Annotated[
        str, typer.Option(help="Flood polygons (.gpkg, .geojson, .shp, .fgb); FILE:LAYER picks a layer.")
    ],
    out: Annotated[str, typer.Option(help="Folder of labelled chips to write (ready for adapt).")],
    dry: Annotated[str | None, typer.Option(help="Dry (not flooded) polygons (FILE or FILE:LAYER).")] = None,
    aoi: Annotated[
        str | None, typer.Option(help="Area checked by the labeller: dry outside flood (FILE or FILE:LAYER).")
    ] = None,
    chip_size: Annotated[int, typer.Option(help="Chip size in pixels.")] = 256,
    min_labelled: Annotated[
        float, typer.Option(help="Keep chips with this share of labelled pixels.")
    ] = 0.01,
    units: Annotated[str, typer.Option(help="Scene units: db | linear.")] = "db",
    event: Annotated[str | None, typer.Option(help="Event name (default: the scene's file name).")] = None,
    date: Annotated[
        str | None, typer.Option(help="Post-event date (ISO, e.g. 2024-10-30) for the time code.")
    ] = None,
) -> None:
    """Rasterise responders' polygons (flood 1, dry 0, else 255) onto a scene; write labelled chips."""
    from floodlora.data.labels import format_labels, make_labels

    result = make_labels(
        scene, flood, out, dry=dry, aoi=aoi, chip_size=chip_size, min_labelled=min_labelled, units=units,
        event=event, date=date,
    )  # fmt: skip
    typer.echo(format_labels(result))


@app.command()
def stats(
    data: Annotated[list[str], typer.Option(help="Dataset root(s); repeat to combine.")],
    out: Annotated[str, typer.Option(help="Stats YAML to write (use as data.normalization).")] = "stats.yaml",
    format: Annotated[str | None, typer.Option(help="Force a format instead of auto-detection.")] = None,
    max_chips: Annotated[int | None, typer.Option(help="Stop after this many chips.")] = None,
) -> None:
    """Per-band mean/std over every chip (streamed), saved for per-dataset normalisation."""
    from floodlora.data.commands import run_stats

    typer.echo(run_stats(data, format, out, max_chips))


@app.command()
def fetch(
    bbox: Annotated[str, typer.Option(help="Area W,S,E,N in degrees (WGS 84).")],
    date: Annotated[str, typer.Option(help="Flood date YYYY-MM-DD: post-event = first pass on/after it.")],
    out: Annotated[str, typer.Option(help="Output folder: pre.tif, post.tif (VV/VH dB), fetch.json.")],
    pre_days: Annotated[int, typer.Option(help="Look this many days back for the pre-event pass.")] = 60,
    catalog: Annotated[
        str, typer.Option(help="STAC API URL or static catalog path (default: Planetary Computer).")
    ] = "https://planetarycomputer.microsoft.com/api/stac/v1",
    collection: Annotated[str, typer.Option(help="STAC collection of Sentinel-1 scenes.")] = "sentinel-1-rtc",
    assets: Annotated[str, typer.Option(help="Asset names of VV and VH, e.g. vv,vh.")] = "vv,vh",
    asset_units: Annotated[str, typer.Option(help="Units of the assets: linear (power) or db.")] = "linear",
    resolution: Annotated[float, typer.Option(help="Output pixel size in metres (UTM).")] = 10.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Sentinel-1 pre/post-event scenes for an area and a date from a STAC catalog (bbox reads only)."""
    from floodlora.data.fetch import format_fetch, run_fetch

    typer.echo(
        format_fetch(
            run_fetch(
                bbox, date, out, pre_days, catalog, collection, assets, asset_units, resolution, progress
            )
        )
    )


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


@app.command()
def info(
    checkpoint: Annotated[
        str, typer.Option(help="Named checkpoint (embedded, clay-v1-base, clay-v1.5) or a file path.")
    ] = "embedded",
) -> None:
    """Describe an encoder checkpoint: size, parameters, source."""
    from floodlora.models.registry import describe_checkpoint

    typer.echo(describe_checkpoint(checkpoint))


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Output folder: data, runs, report.md, metrics.json.")] = (
        "runs/demo"
    ),
    data: Annotated[list[str] | None, typer.Option(help="Use these chips, not synthetic scenes.")] = None,
    format: Annotated[str | None, typer.Option(help="Data format of --data (default: auto).")] = None,
    holdout: Annotated[list[str] | None, typer.Option(help="Event(s) of --data to hold out (glob).")] = None,
    quick: Annotated[bool, typer.Option(help="Tiny sizes: about a minute.")] = False,
    checkpoint: Annotated[str, typer.Option(help="Encoder: embedded, clay-v1-base, PATH.")] = "embedded",
) -> None:
    """The whole method end to end: synthetic data, frozen vs LoRA, baselines, report (no network)."""
    from floodlora.demo import run_demo

    run_demo(out, data, format, holdout or (), quick, checkpoint, log=typer.echo, progress=True)


@app.command()
def pretrain(
    out: Annotated[str, typer.Option(help="Output directory (resumable).")] = "runs/pretrain",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 3000,
    preset: Annotated[str, typer.Option(help="Encoder size preset.")] = "floodlora-mini",
    crop: Annotated[int, typer.Option(help="Crop size in pixels (multiple of 8).")] = 64,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    synthetic: Annotated[int, typer.Option(help="Number of synthetic scenes in the image pool.")] = 384,
    real: Annotated[list[str] | None, typer.Option(help="Root(s) of real chips; labels are ignored.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    fresh: Annotated[bool, typer.Option(help="Ignore an existing state and start again.")] = False,
) -> None:
    """Clay-style masked-autoencoder pretraining of a Clay-architecture encoder on Sentinel-1."""
    from floodlora.training.pretrain_cli import run_pretrain

    run_pretrain(out, steps, preset, crop, batch_size, synthetic, real or [], seed, fresh)


# --------------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------------


@app.command()
def train(
    out: Annotated[str, typer.Option(help="Run directory to write.")],
    data: Annotated[list[str] | None, typer.Option(help="Dataset root(s); repeat to combine.")] = None,
    format: Annotated[str | None, typer.Option(help="Force a data format instead of auto-detection.")] = None,
    strategy: Annotated[str | None, typer.Option(help="frozen | lora | full.")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank (alpha = 2 x rank).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="embedded, clay-v1-base, clay-v1.5 or PATH.")] = None,
    config: Annotated[str | None, typer.Option(help="YAML file or packaged name (paper, cpu-small).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN_DIR/checkpoints/last.ckpt.")] = False,
    max_epochs: Annotated[int | None, typer.Option(help="Override train.max_epochs.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices (processes) for DDP.")] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto | cpu | gpu.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config key: section.key=v.")] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto | 32 | bf16 (auto: bf16 where the CPU/GPU does it fast).")
    ] = None,
) -> None:
    """Adapt an encoder to flood segmentation and write a run directory."""
    from floodlora.training.commands import run_train

    run_train(
        data, format, strategy, rank, checkpoint, config, out, resume, set_, max_epochs, devices, accelerator,
        precision=precision,
    )  # fmt: skip


@app.command()
def evaluate(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by `floodlora train`.")],
    data: Annotated[list[str] | None, typer.Option(help="Dataset root(s); default: the run's data.")] = None,
    format: Annotated[str | None, typer.Option(help="Force a data format instead of auto-detection.")] = None,
    split: Annotated[str, typer.Option(help="train | val | test | ood | all.")] = "test",
    json_out: Annotated[str | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Flood probability threshold (default: the run's, chosen on val).")
    ] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Where the run's base checkpoint now lives.")] = None,
    views: Annotated[str | None, typer.Option(help="Only these views, e.g. post (others missing).")] = None,
    stats_from_data: Annotated[
        bool, typer.Option(help="8-bit chips of a source the run never saw: normalise with their own stats.")
    ] = False,
    precision: Annotated[
        str | None, typer.Option(help="auto | 32 | bf16 (auto: bf16 where the CPU/GPU does it fast).")
    ] = None,
) -> None:
    """Table-2 metrics (accuracy, precision, recall, F1, IoU, Dice) of a run on a data split."""
    from floodlora.training.commands import run_evaluate

    run_evaluate(
        run_dir, data, format, split, json_out, threshold, checkpoint, views, stats_from_data, precision
    )


@app.command()
def sweep(
    out: Annotated[str, typer.Option(help="Output folder: one run per strategy + sweep.md/csv/json/png.")],
    data: Annotated[list[str] | None, typer.Option(help="Dataset root(s); repeat to combine.")] = None,
    format: Annotated[str | None, typer.Option(help="Force a data format instead of auto-detection.")] = None,
    strategies: Annotated[str, typer.Option(help="Comma-separated: frozen, lora:R, full.")] = (
        "frozen,lora:8,lora:64,lora:256,full"
    ),
    checkpoint: Annotated[str | None, typer.Option(help="embedded, clay-v1-base, clay-v1.5 or PATH.")] = None,
    config: Annotated[str | None, typer.Option(help="YAML file or packaged name (paper, cpu-small).")] = None,
    eval_: Annotated[
        list[str] | None, typer.Option("--eval", help="Extra test data NAME=PATH[:FORMAT] (unseen event).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config key: section.key=v.")] = None,
) -> None:
    """Train and evaluate several strategies; write the paper's Table 1 and an F1-vs-cost figure."""
    from floodlora.training.commands import run_sweep

    run_sweep(data, format, strategies, checkpoint, config, out, set_, eval_)


@app.command()
def adapt(
    out: Annotated[str, typer.Option(help="Run directory to write (an ordinary run).")],
    from_: Annotated[
        str,
        typer.Argument(
            metavar="[FROM]", help="Run dir, exported model, or encoder (embedded, PATH). Default: embedded."
        ),
    ] = "embedded",
    data: Annotated[
        list[str] | None,
        typer.Option(help="Chips (any supported format); repeat. Labelled, except with --method self."),
    ] = None,
    view: Annotated[
        list[str] | None,
        typer.Option(help="--method self on a scene: NAME=PATH dB GeoTIFF per view (post, pre); repeat."),
    ] = None,
    format: Annotated[str | None, typer.Option(help="Force a data format instead of auto-detection.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Where FROM's base checkpoint now lives.")] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help=f"Wall-clock cap on fine-tuning [default: {_ADAPT.max_minutes:g}].")
    ] = None,
    max_epochs: Annotated[
        int | None,
        typer.Option(
            help=f"At most this many epochs [default: {_ADAPT.max_epochs}; self: {_SELF.max_epochs}]."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Batches per epoch (chips drawn with replacement) "
            f"[default: {_ADAPT.steps_per_epoch}; self: {_SELF.steps_per_epoch}]."
        ),
    ] = None,
    crop_size: Annotated[
        int | None, typer.Option(help="Training crop in px (default: whole chips, up to 256).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Samples per batch (default: 8 x 128 px worth, 2 of 256 px).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = _ADAPT.lr,
    rank: Annotated[int | None, typer.Option(help="LoRA rank when FROM is a bare encoder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the held-back choice and the crops.")] = _ADAPT.seed,
    hold_back: Annotated[
        bool,
        typer.Option(
            help="fine-tune: with 8 chips or more hold a quarter back for early stopping and the "
            "threshold (default: every chip trains, early stopping on their own loss)."
        ),
    ] = _ADAPT.hold_back,
    method: Annotated[
        str,
        typer.Option(
            help="auto: calibrate a trained FROM, fine-tune a bare encoder | calibrate: train nothing, "
            "set each output's threshold on every chip (seconds) | fine-tune: LoRA + decoder (minutes) | "
            "self: no labels, learn from split-based thresholding's confident pixels (minutes)."
        ),
    ] = _ADAPT.method,
    calibrate_tolerance: Annotated[
        float | None,
        typer.Option(
            help="operating point: the threshold nearest the model's own within this F1 of the best on "
            "the chips (0: the best). Default: 0.01 to calibrate and for self, 0 after fine-tuning."
        ),
    ] = None,
    calibrate_after: Annotated[
        bool,
        typer.Option(
            help="fine-tune: then set each output's operating point on every labelled chip (as calibrate)."
        ),
    ] = _ADAPT.calibrate_after,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier or interrupted run in OUT (a failed run leaves none).")
    ] = False,
    dem: Annotated[
        str | None,
        typer.Option(
            help="--method self on a scene: a DEM GeoTIFF; the teacher leaves out high, steep ground."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Adapt a model to a new flood: to a few labelled chips, or with no labels at all (--method self).

    A trained FROM is calibrated by default: each output's operating point moves toward its best
    threshold on the labelled chips, only as far as they demand (--calibrate-tolerance). A bare
    encoder (or --method fine-tune) fine-tunes LoRA + decoder on every chip, then sets the operating
    point at the best F1 on them (--no-calibrate-after keeps the threshold fine-tuning chose).
    --method self needs no labels: split-based thresholding maps the scene (or chips), and FROM
    learns from its confident pixels; any labels under --data are ignored.
    """
    from floodlora.training.adapt import AdaptOptions, format_summary
    from floodlora.training.adapt import adapt as run_adapt

    is_self = method == "self"
    defaults = _SELF if is_self else _ADAPT
    opts = AdaptOptions(
        steps_per_epoch=steps or defaults.steps_per_epoch, crop_size=crop_size, batch_size=batch_size,
        max_epochs=max_epochs or defaults.max_epochs, lr=lr, seed=seed, lora_rank=rank,
        max_minutes=defaults.max_minutes if max_minutes is None else max_minutes,
        method="fine-tune" if is_self else method, hold_back=hold_back,
        calibrate_tolerance=calibrate_tolerance, calibrate_after=calibrate_after,
    )  # fmt: skip
    if is_self:
        from floodlora.inference.commands import parse_views
        from floodlora.training.self_adapt import SelfOptions, format_self_summary, self_adapt

        options = SelfOptions(training=opts)
        if calibrate_tolerance is not None:
            options.tolerance = calibrate_tolerance
        result = self_adapt(
            from_, data or None, out, scenes=parse_views(view) if view else None, format=format,
            options=options, checkpoint=checkpoint, progress=progress, overwrite=overwrite, dem=dem,
        )  # fmt: skip
        typer.echo(format_self_summary(result.summary))
    else:
        if view or dem:
            raise ConfigError(
                "--view and --dem are for --method self (a scene without labels); pass --data CHIPS"
            )
        result = run_adapt(
            from_, data or [], out, format=format, options=opts, checkpoint=checkpoint, progress=progress,
            overwrite=overwrite,
        )  # fmt: skip
        typer.echo(format_summary(result.summary))
    typer.echo(f"run directory: {result.run_dir}")


# --------------------------------------------------------------------------------------------------
# inference and deployment
# --------------------------------------------------------------------------------------------------


@app.command()
def predict(
    run_dir: Annotated[str, typer.Argument(help="Run directory (or `export --merge` directory).")],
    view: Annotated[list[str], typer.Option(help="NAME=PATH GeoTIFF per view (post, pre, ...); repeat.")],
    out: Annotated[str, typer.Option(help="Flood mask COG to write (uint8: 0 dry, 1 flood, 255 nodata).")],
    probabilities: Annotated[str | None, typer.Option(help="Also write float32 probabilities here.")] = None,
    uncertainty: Annotated[str | None, typer.Option(help="Also write the probability spread here.")] = None,
    polygons: Annotated[
        str | None, typer.Option(help="Flood polygons with area_km2 (.gpkg, .geojson, .fgb, .shp).")
    ] = None,
    simplify: Annotated[
        float | None, typer.Option(metavar="METRES", help="Simplify polygons with this tolerance.")
    ] = None,
    min_area: Annotated[
        float | None,
        typer.Option(metavar="M2", help="Remove flood areas smaller than this (mask and polygons)."),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Also write classes: 0 dry, 1 flood, 2 reference water, 3 excluded.")
    ] = None,
    confidence: Annotated[str | None, typer.Option(help="Also write a uint8 0-100 confidence layer.")] = None,
    confidence_tta: Annotated[
        bool, typer.Option(help="Lower the confidence by the spread over 4 flips (TTA on).")
    ] = False,
    reference_water: Annotated[
        str | None, typer.Option(metavar="PATH", help="Reference water GeoTIFF (JRC occurrence %, or 0/1).")
    ] = None,
    reference_threshold: Annotated[
        float, typer.Option(help="Occurrence % at or above which a pixel is reference water.")
    ] = 50.0,
    dem: Annotated[
        str | None, typer.Option(metavar="PATH", help="DEM GeoTIFF: exclude high, steep, shadow, layover.")
    ] = None,
    hand_max: Annotated[float, typer.Option(help="Exclude ground higher above drainage (m).")] = 15.0,
    slope_max: Annotated[float, typer.Option(help="Exclude steeper ground (degrees).")] = 15.0,
    shadow_layover: Annotated[bool, typer.Option(help="Exclude radar shadow / layover (with --dem).")] = True,
    incidence_angle: Annotated[
        float | None, typer.Option(help="Incidence angle (degrees) for shadow / layover (default 38).")
    ] = None,
    orbit_state: Annotated[
        str | None, typer.Option(help="ascending | descending: the look direction for shadow / layover.")
    ] = None,
    pre_water: Annotated[
        str,
        typer.Option(
            help="Pre-event water that is never flood: auto | pair (the flood output on pre, pre) | "
            "water (the run's water output on pre) | otsu | off."
        ),
    ] = "auto",
    pre_water_threshold: Annotated[
        float | None,
        typer.Option(help="Probability on the pre view that is pre-event water (default: the run's)."),
    ] = None,
    adapter: Annotated[str | None, typer.Option(help="Adapter file or RUN_DIR/adapters/NAME.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Where the base checkpoint lives now.")] = None,
    units: Annotated[str, typer.Option(help="Input units: db | linear.")] = "db",
    tile: Annotated[int | None, typer.Option(help="Tile size (default: the run's crop size).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Tile overlap in pixels (default: tile / 4).")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 4,
    threshold: Annotated[
        float | None, typer.Option(help="Flood probability threshold (default: the run's, chosen on val).")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over 4 flips (test-time augmentation).")] = False,
    mc_dropout: Annotated[int, typer.Option(help="N LoRA-dropout samples for the uncertainty layer.")] = 0,
    date: Annotated[
        list[str] | None,
        typer.Option(
            help="Acquisition date per view, VIEW=ISO (post=2021-05-01, pre=2021-04-19); repeat. "
            "A bare date is the post-event one."
        ),
    ] = None,
    align: Annotated[bool, typer.Option(help="Warp views onto the post-event grid when they differ.")] = True,
    cog: Annotated[bool, typer.Option(help="Cloud Optimized GeoTIFF (else tiled GeoTIFF).")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    precision: Annotated[
        str, typer.Option(help="auto | 32 | bf16 for the forward passes (auto: bf16 where fast).")
    ] = "auto",
    target: Annotated[
        str | None,
        typer.Option(
            help="flood (new water) | water (all water), for a run with both outputs "
            "(default: flood when a pre-event view is given, else water)."
        ),
    ] = None,
) -> None:
    """Flood map of whole georeferenced Sentinel-1 scenes (tiled, blended, CRS preserved)."""
    from floodlora.inference.commands import class_options, run_predict

    cls = class_options(
        classes, confidence, confidence_tta, reference_water, reference_threshold, dem, hand_max,
        slope_max, shadow_layover, incidence_angle, orbit_state, pre_water, pre_water_threshold,
    )  # fmt: skip
    summary = run_predict(
        run_dir, view, out, probabilities=probabilities, uncertainty=uncertainty, polygons=polygons,
        adapter=adapter, checkpoint=checkpoint, units=units, tile=tile, overlap=overlap,
        batch_size=batch_size, threshold=threshold, tta=tta, mc_dropout=mc_dropout, date=date,
        align=align, cog=cog, progress=progress, simplify=simplify, min_area=min_area,
        precision=precision, target=target, classes=cls,
    )  # fmt: skip
    typer.echo(summary)


@app.command(name="map")
def map_(
    out: Annotated[str, typer.Option(help="Output folder: scenes, mask, polygons, quicklook, summary.")],
    bbox: Annotated[str | None, typer.Option(help="Area W,S,E,N in degrees (WGS 84).")] = None,
    date: Annotated[
        str | None, typer.Option(help="Flood date YYYY-MM-DD (with --areas: rows without one).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Run directory (train or export --merge). Default: none; the embedded encoder "
            "self-adapts to the fetched scenes with no labels (adapt --method self), in OUT/model."
        ),
    ] = None,
    catalog: Annotated[str | None, typer.Option(help="STAC API URL or static catalog path.")] = None,
    collection: Annotated[str | None, typer.Option(help="STAC collection of Sentinel-1 scenes.")] = None,
    pre_days: Annotated[int, typer.Option(help="Look this many days back for the pre-event pass.")] = 60,
    threshold: Annotated[float | None, typer.Option(help="Flood threshold (default: the run's).")] = None,
    polygons: Annotated[str, typer.Option(help="Polygon file name in OUT (.gpkg, .geojson, .fgb, .shp).")] = (
        "flood.gpkg"
    ),
    simplify: Annotated[float | None, typer.Option(metavar="METRES", help="Simplify polygons.")] = None,
    min_area: Annotated[
        float | None, typer.Option(metavar="M2", help="Remove smaller flood areas (mask and polygons).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    reference_water: Annotated[
        str, typer.Option(help="auto | stac (jrc-gsw occurrence) | none | a GeoTIFF path.")
    ] = "auto",
    reference_threshold: Annotated[
        float, typer.Option(help="Occurrence % at or above which a pixel is reference water.")
    ] = 50.0,
    dem: Annotated[str, typer.Option(help="auto | stac (cop-dem-glo-30) | none | a GeoTIFF path.")] = "auto",
    hand_max: Annotated[float, typer.Option(help="Exclude ground higher above drainage (m).")] = 15.0,
    slope_max: Annotated[float, typer.Option(help="Exclude steeper ground (degrees).")] = 15.0,
    shadow_layover: Annotated[bool, typer.Option(help="Exclude radar shadow / layover from the DEM.")] = True,
    pre_water: Annotated[
        str, typer.Option(help="Pre-event water that is never flood: auto | pair | water | otsu | off.")
    ] = "auto",
    confidence_tta: Annotated[
        bool, typer.Option(help="Lower the confidence by the spread over 4 flips (TTA on).")
    ] = False,
    areas: Annotated[
        str | None, typer.Option(help="Many areas: .gpkg/.geojson/.csv, one per row (optional date column).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="With --areas: Dask scheduler tcp://HOST:PORT.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="With --areas: LocalCluster workers (default: sized).")
    ] = None,
) -> None:
    """Flood map of an area on a date: fetch + predict + classes + polygons + quicklook + summary.json.

    Without --model the map needs no labels: split-based thresholding maps the fetched scenes, and
    the embedded encoder self-adapts to its confident pixels before it maps (minutes on a CPU).
    """
    from floodlora.data.terrain import TerrainOptions
    from floodlora.inference.classes import MapLayers
    from floodlora.inference.mapping import format_map, run_map
    from floodlora.training.self_adapt import self_adapt_scenes

    layers = MapLayers(
        reference_water=reference_water, reference_threshold=reference_threshold, dem=dem,
        terrain=TerrainOptions(hand_max_m=hand_max, slope_max_deg=slope_max, shadow_layover=shadow_layover),
        confidence_tta=confidence_tta, pre_water=pre_water,
    )  # fmt: skip
    adapter = None
    if model is None:  # a local DEM also keeps the label-free teacher off high and steep ground
        from functools import partial
        from pathlib import Path

        adapter = partial(self_adapt_scenes, dem=dem) if Path(dem).is_file() else self_adapt_scenes
    if areas is not None:
        from floodlora.inference.areas import format_areas, run_areas

        res = run_areas(
            areas, out, date=date, scheduler=scheduler, workers=workers, echo=typer.echo, model=model,
            catalog=catalog, collection=collection, pre_days=pre_days, threshold=threshold, polygons=polygons,
            simplify=simplify, min_area=min_area, layers=layers, adapter=adapter,
        )  # fmt: skip
        typer.echo(format_areas(res))
        return
    if bbox is None or date is None:
        raise ConfigError("map needs --bbox and --date (or --areas FILE for many areas)")
    result = run_map(
        bbox, date, out, model, catalog=catalog, collection=collection, pre_days=pre_days,
        threshold=threshold, polygons=polygons, simplify=simplify, min_area=min_area, progress=progress,
        adapter=adapter, layers=layers,
    )  # fmt: skip
    typer.echo(format_map(result))


@app.command()
def suggest(
    run_dir: Annotated[str, typer.Argument(help="Run directory (or `export --merge` directory).")],
    view: Annotated[list[str], typer.Option(help="NAME=PATH GeoTIFF per view (post, pre, ...); repeat.")],
    out: Annotated[str, typer.Option(help="Tile footprints to write (.gpkg, .geojson, .fgb).")],
    n: Annotated[int, typer.Option(help="How many tiles.")] = 10,
    size: Annotated[int, typer.Option(help="Tile size in pixels (as `labels --chip-size`).")] = 256,
    mc_dropout: Annotated[int, typer.Option(help="N LoRA-dropout samples (0: spread over 4 flips).")] = 0,
    min_valid: Annotated[float, typer.Option(help="Skip tiles with less valid data than this.")] = 0.5,
    units: Annotated[str, typer.Option(help="Input units: db | linear.")] = "db",
    checkpoint: Annotated[str | None, typer.Option(help="Where the base checkpoint lives now.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Footprints of the N tiles where the model is least certain: where labels help most."""
    from floodlora.inference.commands import parse_views
    from floodlora.inference.suggest import format_suggest, suggest_tiles

    result = suggest_tiles(
        run_dir, parse_views(view), out, n=n, size=size, mc_dropout=mc_dropout, min_valid=min_valid,
        units=units, checkpoint=checkpoint, progress=progress,
    )  # fmt: skip
    typer.echo(format_suggest(result))


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(help="A run directory written by `floodlora train`.")],
    out: Annotated[str, typer.Option(help="Output directory.")],
    merge: Annotated[bool, typer.Option(help="Merge LoRA; write a standalone model.")] = False,
    adapter: Annotated[
        str | None, typer.Option(help="Write adapter-only OUT/NAME.safetensors (NAME: a bare name, no path).")
    ] = None,
    torch_export: Annotated[bool, typer.Option(help="Also write torch.export model.pt2.")] = False,
    onnx: Annotated[bool, typer.Option(help="Also write model.onnx (checked with onnxruntime).")] = False,
    tile: Annotated[int | None, typer.Option(help="Tile size of exported graphs.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Where the run's base checkpoint now lives.")] = None,
) -> None:
    """Deployment artefacts: merged standalone model, adapter-only file, torch.export / ONNX."""
    from floodlora.inference.commands import run_export

    typer.echo(run_export(run_dir, out, merge, adapter, torch_export, onnx, tile, checkpoint))


# --------------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------------


@app.command()
def baseline(
    method: Annotated[
        str,
        typer.Argument(
            help="otsu (post-event backscatter), change (post - pre), or split (split-based "
            "thresholding of bimodal tiles, label-free; new water with a pre view)."
        ),
    ],
    data: Annotated[list[str] | None, typer.Option(help="Root(s) of labelled chips.")] = None,
    format: Annotated[str | None, typer.Option(help="Data format (default: auto-detect).")] = None,
    split: Annotated[str, typer.Option(help="train | val | test | ood | all (DataModule splits).")] = "test",
    band: Annotated[str, typer.Option(help="vv | vh | both (mean of the bands present).")] = "both",
    mode: Annotated[str, typer.Option(help="chip / event (Otsu), fitted (best F1 on train).")] = "chip",
    holdout: Annotated[list[str] | None, typer.Option(help="Event(s) held out as the ood split.")] = None,
    run: Annotated[str | None, typer.Option(help="Reuse this run directory's data and splits.")] = None,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Write the metrics JSON here (same keys as evaluate).")
    ] = None,
) -> None:
    """Score a classical baseline (Otsu, change detection, split-based thresholding) with the models'
    metrics, splits and nodata rules."""
    from floodlora.analysis.baselines import baseline_command, format_result

    result = baseline_command(method, data, format, split, band, mode, holdout, run, json_out)
    typer.echo(format_result(result))


@app.command()
def embed(
    data: Annotated[list[str], typer.Option(help="Root(s) of labelled chips.")],
    out: Annotated[str, typer.Option(help="Output directory (tsne.png, embeddings.json).")],
    checkpoint: Annotated[str, typer.Option(help="Base encoder: a name or a file path.")] = "embedded",
    run: Annotated[str | None, typer.Option(help="Use this run's adapted encoder (and its bands).")] = None,
    format: Annotated[str | None, typer.Option(help="Data format (default: auto-detect).")] = None,
    split: Annotated[str, typer.Option(help="train | val | test | ood | all.")] = "test",
    view: Annotated[str, typer.Option(help="Which view to embed.")] = "post",
    max_chips: Annotated[int, typer.Option(help="At most this many chips (evenly spaced).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the probe split and the t-SNE.")] = 0,
) -> None:
    """t-SNE of patch embeddings (water/land, event) and a linear-probe accuracy for water vs land."""
    from floodlora.analysis.embeddings import format_embed, run_embed

    base = None if run and checkpoint == "embedded" else checkpoint
    result = run_embed(base, data, out, run, format, split, view=view, max_chips=max_chips, seed=seed)
    typer.echo(format_embed(result))


@app.command()
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="Run directories (frozen, LoRA ranks, full...).")],
    out: Annotated[str, typer.Option(help="Output directory for report.md and its figures.")],
    baselines: Annotated[bool, typer.Option(help="Also score Otsu / change detection.")] = False,
    figures: Annotated[bool, typer.Option(help="Draw prediction panels and the t-SNE.")] = True,
    panel_chips: Annotated[int, typer.Option(help="Chips per panel figure (worst and best).")] = 4,
    embed_chips: Annotated[int, typer.Option(help="Test chips embedded for the t-SNE and probe.")] = 16,
) -> None:
    """One Markdown report: Table 1 (in-distribution), Table 2 (held-out events), baselines, figures."""
    from floodlora.analysis.report import build_report

    path = build_report(run_dirs, out, baselines, figures, panel_chips, embed_chips)
    typer.echo(f"written: {path}")


#: OS errors that come from the user's paths and disks (permissions, read-only or full file systems,
#: a path under a regular file), not from a bug: reported like FloodLoraError.
_USER_OS_ERRORS = {
    errno.EPERM, errno.ENOENT, errno.EACCES, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
    errno.EROFS, errno.EDQUOT,
}  # fmt: skip


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning as one line, like an error: no source path, no line of code.

    Deprecation warnings are addressed to developers (Python hides them outside tests): not shown.
    """
    if issubclass(category, DeprecationWarning | PendingDeprecationWarning):
        return
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file if file is not None else sys.stderr, flush=True)


def main() -> None:
    """Console entry point: run the app and turn user errors and warnings into one clean line each."""
    import warnings

    from floodlora.errors import FloodLoraError

    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app()
    except FloodLoraError as err:
        _console().print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as err:
        if err.errno not in _USER_OS_ERRORS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        _console().print(f"[bold red]error:[/] {where}{err.strerror or err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted[/]")
        sys.exit(130)
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    main()
