"""Console front end for pretraining: builds the config, shows a progress bar, prints the summary."""

from __future__ import annotations

from pathlib import Path

from floodlora.training.pretrain import PretrainConfig, build_pool, pretrain


def run_pretrain(
    out: str | Path,
    steps: int,
    preset: str,
    crop: int,
    batch_size: int,
    synthetic: int,
    real: list[str],
    seed: int,
    fresh: bool,
) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from floodlora.errors import ConfigError

    if crop % 8:
        raise ConfigError(f"--crop {crop} is not a multiple of the patch size 8")
    cfg = PretrainConfig(
        preset=preset,
        crop_size=crop,
        steps=steps,
        batch_size=batch_size,
        synthetic_scenes=synthetic,
        real_roots=list(real),
        seed=seed,
    )
    console = Console(stderr=True)
    with console.status("building the image pool"):
        pool = build_pool(cfg, progress=lambda msg: console.log(msg))
    with Progress(
        TextColumn("pretraining"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("mae", total=steps, loss=float("nan"))
        summary = pretrain(
            cfg,
            out,
            pool=pool,
            resume=not fresh,
            on_step=lambda s, loss: bar.update(task, completed=s, loss=loss),
        )
    console.print(
        f"encoder -> {Path(out) / 'encoder.safetensors'}  ({summary['wall_seconds']:.0f} s, "
        f"loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f})"
    )
    return summary
