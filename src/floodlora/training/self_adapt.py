"""Self-adaptation: `floodlora adapt [FROM] --method self (--data PATH | --view post=POST.tif)`.

A responder arrives with a scene and no labels, and no model trained on labels may ship. The encoder
therefore adapts itself to the scene:

1. **Teacher.** Split-based thresholding (:mod:`floodlora.data.split_threshold`) maps water, or new
   water where a pre-event view is given. It runs per event, since an event's chips are pieces of
   one scene. Its confident pixels become pseudo-labels; shores, speckle and every pixel it is
   unsure of stay unlabelled (255). Labels found under PATH are never read for training.
2. **Student.** FROM (by default the embedded encoder with the ``cpu-small`` recipe) fine-tunes LoRA
   and the decoder on the pseudo-labels through :func:`floodlora.training.adapt.adapt`. The network
   sees context the teacher's per-pixel threshold cannot (texture, shape, neighbourhood), and the
   teacher's unsure pixels are left for it to decide.
3. **Operating point without labels.** Each output's threshold is set on the teacher's whole map
   (every valid pixel, unsure ones included) of at most ``PseudoLabels.max_scored`` chips: of the
   thresholds within ``tolerance`` F1 of the best agreement with it, the one nearest 0.5. Trained
   without the unsure pixels, the student under-flags at 0.5; the teacher's map sets the extent,
   the student where the water lies. ``adapt.json`` records the
   rule, the teacher's thresholds and kept tiles, and the pseudo-label shares.

The result is an ordinary run that `predict`, `evaluate` and `map` use. A scene in which the
teacher finds no bimodal tile looks dry. There is nothing to adapt to, so `self_adapt` stops with a
:class:`DrySceneError` error that `map` turns into a dry map.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from floodlora.data.split_threshold import DrySceneError, SplitOptions, SplitResult
from floodlora.errors import ConfigError
from floodlora.training.adapt import ADAPT_FILE, AdaptResult, PseudoLabels
from floodlora.training.options import SELF_ADAPT, AdaptOptions

OPERATING_TOLERANCE = 0.01  # the threshold nearest 0.5 within one F1 point of the best on pseudo-labels


@dataclass
class SelfOptions:
    """What self-adaptation uses: the teacher's settings and the student's budget."""

    teacher: SplitOptions = field(default_factory=SplitOptions)
    training: AdaptOptions = field(default_factory=lambda: replace(SELF_ADAPT))
    tolerance: float = OPERATING_TOLERANCE
    max_scored: int = 48  # chips scored for early stopping and the operating point

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"self-adaptation: tolerance must be in [0, 1), got {self.tolerance}")
        if self.max_scored < 1:
            raise ConfigError(f"self-adaptation: max scored chips must be >= 1, got {self.max_scored}")


@dataclass
class Teaching:
    """The teacher's pseudo-labels on disk and what it found, per event."""

    pseudo: PseudoLabels  # confident pixels only: what the student learns
    maps: PseudoLabels  # the teacher's whole map (every valid pixel): where the operating point is set
    events: dict[str, dict[str, Any]]
    chips: int

    @property
    def found_water(self) -> bool:
        """Whether any chip has a confident water (or new-water) pixel to learn from."""
        return any(e["pseudo_water_pixels"] for e in self.events.values())


def teach(
    refs: Sequence[Any],
    options: SplitOptions,
    scratch: Path,
    max_scored: int = 48,
    exclude: dict[str, np.ndarray] | None = None,
) -> Teaching:
    """Pseudo-labels for every chip of `refs` (one teacher fit per event), written under `scratch`.

    `exclude` (chip id -> bool mask) is ground that cannot hold floodwater: never water, never a label.
    """
    from floodlora.data.sources import read_sample
    from floodlora.data.split_threshold import split_threshold

    scratch.mkdir(parents=True, exist_ok=True)
    by_event: dict[str, list[Any]] = {}
    for ref in refs:
        by_event.setdefault(ref.event, []).append(ref)
    files: dict[str, str] = {}
    maps: dict[str, str] = {}
    kinds: dict[str, str] = {}
    events: dict[str, dict[str, Any]] = {}
    for event, group in by_event.items():
        samples = [read_sample(r) for r in group]
        masks = [exclude.get(r.chip_id) for r in group] if exclude else None
        result: SplitResult = split_threshold(samples, options, exclude=masks)
        wet = sum(int((p == 1).sum()) for p in result.pseudo)
        events[event] = result.describe() | {"chips": len(group), "pseudo_water_pixels": wet}
        if result.bands and not wet:
            events[event]["messages"].append(
                f"{event}: bimodal tiles, but no pixel confidently {result.kind} (the scene looks dry)"
            )
        for ref, pseudo, water in zip(group, result.pseudo, result.water, strict=True):
            if not (pseudo != 255).any():
                continue
            path = scratch / f"{len(files):06d}.npy"
            np.save(path, pseudo)
            np.save(path.with_suffix(".map.npy"), water)
            files[ref.key] = str(path)
            maps[ref.key] = str(path.with_suffix(".map.npy"))
            kinds[ref.key] = result.kind
    return Teaching(
        PseudoLabels(files, kinds, max_scored), PseudoLabels(maps, kinds, max_scored), events, len(refs)
    )


def self_adapt(
    from_: str | Path = "embedded",
    data: str | Path | Sequence[str | Path] | None = None,
    out: str | Path = "runs/self",
    *,
    scenes: dict[str, str | Path] | None = None,
    format: str | None = None,
    options: SelfOptions | None = None,
    checkpoint: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    dem: str | Path | None = None,
) -> AdaptResult:
    """Adapt FROM to unlabelled chips (`data`) or scenes (`scenes`: view -> GeoTIFF, dB); write `out`.

    With `dem` (scenes only: a GeoTIFF, warped onto the post scene's grid) the teacher leaves out
    ground too high above drainage or too steep to hold floodwater (data.terrain's default rules).

    Raises:
        DrySceneError: the teacher kept no tile (nothing to adapt to; the scene maps dry).
        ConfigError / DataError: bad FROM, no data, unreadable scenes.
    """
    from floodlora.data.labels import write_scene_chips
    from floodlora.data.sources import discover
    from floodlora.io import atomic_write_json
    from floodlora.training.adapt import _calibrate_after, _check_out, adapt

    t0 = time.perf_counter()
    opts = options or SelfOptions()
    out = Path(out)
    if (data is None) == (scenes is None):
        raise ConfigError("adapt --method self: pass --data PATH (chips) or --view post=POST.tif (a scene)")
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Scratch beside the run (never in the system temp dir): chips cut from scenes and pseudo-labels.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-self-", dir=out.parent) as tmp:
        scratch = Path(tmp)
        exclude: dict[str, np.ndarray] | None = None
        terrain_notes: list[str] = []
        if scenes is not None:
            windows: dict[str, tuple[int, int, int, int]] = {}
            roots = [str(write_scene_chips(scenes, scratch / "chips", windows=windows))]
            format = "folder"
            if dem is not None:
                exclude, terrain_notes = _terrain_exclusion(scenes, dem, windows)
        else:
            if dem is not None:
                raise ConfigError(
                    "--dem needs a georeferenced scene (--view post=POST.tif), not --data chips"
                )
            roots = [str(data)] if isinstance(data, str | Path) else [str(d) for d in data]  # type: ignore[union-attr]
        refs = discover(roots, format)
        teaching = teach(refs, opts.teacher, scratch / "pseudo", opts.max_scored, exclude)
        if not teaching.found_water:
            notes = "; ".join(m for e in teaching.events.values() for m in e["messages"])
            raise DrySceneError(f"{', '.join(map(str, scenes.values() if scenes else roots))}: {notes}")
        training = replace(opts.training, method="fine-tune", calibrate_after=False, hold_back=False)
        result = adapt(
            from_, roots, out, format=format, options=training, checkpoint=checkpoint,
            progress=progress, pseudo=teaching.pseudo,
        )  # fmt: skip
        base_norm = _base_normalization(out)
        # On the teacher's whole map, not its confident pixels: trained without the unsure pixels
        # (shores, shallow water), the student under-flags at 0.5, and on the confident pixels alone
        # every threshold scores alike (docs/quality.md measures both).
        point = _calibrate_after(
            out, training, base_norm, progress, pseudo=teaching.maps, tolerance=opts.tolerance
        )
    summary = dict(result.summary)
    summary.update(
        {
            "method": "self",
            "labels_used": False,
            "data": {"scenes": {k: str(v) for k, v in scenes.items()}} if scenes else {"roots": roots},
            "teacher": {"options": asdict(opts.teacher), "events": teaching.events},
            "pseudo_labelled_chips": len(teaching.pseudo.files),
            "terrain": {"dem": str(dem), "notes": terrain_notes} if dem is not None else None,
            "chips_seen": teaching.chips,
            "operating_point": {
                "rule": (
                    f"each output's threshold nearest 0.5 within {opts.tolerance:g} F1 of the best "
                    f"agreement with the teacher's whole map on at most {opts.max_scored} chips"
                ),
                **(point["summary"] if point is not None else {"set": False}),
            },
            "threshold": 0.5 if point is not None else summary.get("threshold", 0.5),
            "wall_seconds": time.perf_counter() - t0,
        }
    )
    summary.pop("calibrated_after", None)
    if point is not None:
        metrics = {
            **result.metrics,
            **point["metrics"],
            "threshold_source": "set on pseudo-labels (no labels)",
        }
        atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / ADAPT_FILE, summary)
    return AdaptResult(out, summary, result.metrics)


def _terrain_exclusion(
    scenes: dict[str, str | Path], dem: str | Path, windows: dict[str, tuple[int, int, int, int]]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """HAND and slope exclusions on the post scene's grid, cut into the chips' windows."""
    import rasterio

    from floodlora.data.terrain import SceneGrid, TerrainOptions, terrain_exclusions

    post = next(p for v, p in scenes.items() if v.startswith("post"))
    with rasterio.open(post) as ds:
        grid = SceneGrid(ds.crs, ds.transform, ds.width, ds.height)
    found = terrain_exclusions([str(dem)], grid, TerrainOptions(shadow_layover=False))
    masks = {cid: found.excluded[r : r + h, c : c + w] for cid, (r, c, h, w) in windows.items()}
    notes = [*found.messages, "excluded by " + ", ".join(f"{k} {v} px" for k, v in found.counts.items())]
    return masks, notes


def _base_normalization(run_dir: Path) -> str:
    from floodlora.models.registry import checkpoint_normalization

    base = json.loads((run_dir / "base.json").read_text())
    return checkpoint_normalization(str(base.get("checkpoint")))


def format_self_summary(summary: dict[str, Any]) -> str:
    """The lines `floodlora adapt --method self` prints."""
    src = summary["from"]
    lines = [f"self-adapted from {src['kind']} {src['path']} (no labels used)"]
    for event, t in summary["teacher"]["events"].items():
        if t["bands"]:
            fits = ", ".join(
                f"{b} {f['threshold']:.2f} ({f['tiles_kept']}/{f['tiles_total']} tiles bimodal)"
                for b, f in t["bands"].items()
            )
            lines.append(
                f"teacher on {event} ({t['chips']} chips, {t['kind']}): {fits}; pseudo-labels on "
                f"{100 * t['pseudo_labelled_fraction']:.0f}% of valid pixels, "
                f"{100 * t['pseudo_water_fraction']:.1f}% of them water"
            )
        else:
            lines.append(f"teacher on {event}: {'; '.join(t['messages'])}")
    point = summary["operating_point"]
    if point.get("output_calibration"):
        moved = ", ".join(f"{k} {v['threshold']:.2f}" for k, v in point["output_calibration"].items())
        lines.append(f"operating point set on pseudo-labels (chosen thresholds: {moved}; now 0.5)")
    lines.append(
        f"{summary['epochs']} epochs{' (early stop)' if summary['early_stopped'] else ''}, "
        f"{summary['trainable_params']:,} trainable params, wall {summary['wall_seconds']:.0f} s"
    )
    return "\n".join(lines)


def self_adapt_scenes(
    scenes: dict[str, Path], out: Path, progress: bool = True, dem: str | Path | None = None
) -> Path:
    """`floodlora map` without a model: the embedded encoder self-adapted on the fetched scenes
    (with `dem`, a local DEM, the teacher leaves out high and steep ground).

    Returns the run directory. Raises :class:`DrySceneError` when the teacher finds no water.
    """
    return self_adapt("embedded", None, out, scenes=dict(scenes), progress=progress, dem=dem).run_dir
