"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""

from __future__ import annotations


class FloodLoraError(Exception):
    """An error caused by the user's input (a file, a flag, a config), not by a bug."""


class DataError(FloodLoraError):
    """A data file is missing, unreadable, or inconsistent."""


class CheckpointError(FloodLoraError):
    """A model checkpoint cannot be used (wrong format, truncated, missing or unexpected keys)."""


class ConfigError(FloodLoraError):
    """A configuration value is invalid."""


def size_text(height: int, width: int) -> str:
    """A raster size for messages, always width x height as GDAL prints it: (20, 16) -> '16x20 px'."""
    return f"{int(width)}x{int(height)} px"
