"""Durations such as ``500ms``, ``10s``, ``5m`` or ``1h``: parsed to seconds, formatted back for people.

One grammar for manifests (a Host's ``timeouts``) and the command line (``--interval``), so an
operator writes a duration the same way everywhere.
"""

from __future__ import annotations

import math
import re

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
    """Seconds as duration text that parses back to exactly the same number: ``10s``, ``1m``,
    ``2h``, ``250ms`` for whole units, else the seconds in Python's shortest round-trip form."""
    for suffix, unit in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        whole = round(seconds / unit)
        if whole >= 1 and (unit >= 1 or seconds < 1) and parse_duration(f"{whole}{suffix}") == seconds:
            return f"{whole}{suffix}"
    text = repr(float(seconds))
    if not re.fullmatch(r"[0-9]+\.[0-9]+", text):  # an exponent (tiny or huge): no unit text
        text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return f"{text}s"


def parse_manifest_duration(text: str) -> float:
    """A duration as a manifest writes it: exactly :data:`DURATION_PATTERN` (the schema's; no
    exponent, sign, underscore or non-ASCII digit that ``float()`` would take), then parsed."""
    if re.fullmatch(DURATION_PATTERN, text) is None:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 30s, 5m or 24h")
    return parse_duration(text)
