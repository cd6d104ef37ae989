"""Durations such as ``500ms``, ``10s``, ``5m`` or ``1h``: parsed to seconds, formatted back for people.

One grammar for manifests (a Host's ``timeouts``) and the command line (``--interval``), so an
operator writes a duration the same way everywhere.
"""

from __future__ import annotations

import math

DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$"
_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))  # "ms" before "s"


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` (a bare number is seconds) -> seconds, finite and above 0;
    anything else is a ``ValueError`` whose text says what a duration looks like."""
    number, scale = text, 1.0
    for suffix, unit in _UNITS:
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], unit
            break
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0) or number.strip() != number:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 30s, 5m or 24h")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as the shortest exact duration text: ``10s``, ``1m``, ``1.5s``, ``250ms``."""
    for suffix, unit in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= unit and (seconds / unit).is_integer():
            return f"{int(seconds / unit)}{suffix}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
