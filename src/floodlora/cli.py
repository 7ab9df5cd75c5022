"""The `floodlora` command line: one thin function per command, no logic.

Heavy libraries are imported inside each command so that `floodlora --help` stays fast.
User errors (:class:`floodlora.errors.FloodLoraError`) become a one-line message and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="floodlora",
    help="Rapid adaptation of Clay foundation models to Sentinel-1 flood segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _console():  # noqa: ANN202 - rich is imported lazily
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
def stats(
    data: Annotated[list[str], typer.Option(help="Dataset root(s); repeat to combine.")],
    out: Annotated[str, typer.Option(help="Stats YAML to write (use as data.normalization).")] = "stats.yaml",
    format: Annotated[str | None, typer.Option(help="Force a format instead of auto-detection.")] = None,
    max_chips: Annotated[int | None, typer.Option(help="Stop after this many chips.")] = None,
) -> None:
    """Per-band mean/std over every chip (streamed), saved for per-dataset normalisation."""
    from floodlora.data.commands import run_stats

    typer.echo(run_stats(data, format, out, max_chips))


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


def main() -> None:
    """Console entry point: run the app and turn user errors into one clean line."""
    from floodlora.errors import FloodLoraError

    try:
        app()
    except FloodLoraError as err:
        _console().print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _console().print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
