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
