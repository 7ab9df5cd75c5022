"""Clay's metadata codes: acquisition time and location as sin/cos pairs (numpy only).

Training (the DataModule) and inference (`predict`) both encode through these two functions, so a
tile sees the same numbers a training chip with the same date and place saw. Kept free of torch and
Lightning so `floodlora predict` can import it cheaply.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from floodlora.errors import ConfigError


def parse_date(date: str) -> dt.datetime:
    """An ISO date or date-time; raises ValueError for anything else."""
    return dt.datetime.fromisoformat(str(date))


def check_date(date: str | None, flag: str = "--date") -> None:
    """A user's date must parse: a training chip's bad date codes as zeros, a typed one is an error."""
    if not date:
        return
    try:
        parse_date(date)
    except ValueError:
        raise ConfigError(
            f"{flag} {date!r}: expected an ISO date such as 2024-10-30 or 2024-10-30T17:45"
        ) from None


def encode_time(date: str | None) -> np.ndarray:
    """Clay's time encoding [sin w, cos w, sin h, cos h]: w = ISO week·2π/52, h = hour·2π/24.

    The hour is 12 when only a date is known; zeros when the date is unknown or not ISO.
    """
    if not date:
        return np.zeros(4, dtype=np.float32)
    try:
        when = parse_date(date)
    except ValueError:
        return np.zeros(4, dtype=np.float32)
    has_time = "T" in str(date) or " " in str(date).strip()
    hour = when.hour + when.minute / 60.0 if has_time else 12.0
    w = when.isocalendar()[1] * 2 * math.pi / 52
    h = hour * 2 * math.pi / 24
    return np.array([math.sin(w), math.cos(w), math.sin(h), math.cos(h)], dtype=np.float32)


def encode_latlon(lat: float | None, lon: float | None) -> np.ndarray:
    """Clay's location encoding [sin lat, cos lat, sin lon, cos lon] in radians; zeros when unknown."""
    if lat is None or lon is None:
        return np.zeros(4, dtype=np.float32)
    la, lo = math.radians(lat), math.radians(lon)
    return np.array([math.sin(la), math.cos(la), math.sin(lo), math.cos(lo)], dtype=np.float32)
