"""Option values with a format, checked as argparse ``type=`` functions: a wrong one is a usage error
(exit 2) naming its option, before any command runs."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime, timedelta

__all__ = ["duration", "expiry", "listen_address", "period"]

_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))  # "ms" before "s"


def duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` (a bare number is seconds) -> seconds, finite and above 0."""
    number, scale = text, 1.0
    for suffix, unit in _UNITS:
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], unit
            break
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 500ms, 30s, 5m or 24h")
    return seconds


def expiry(text: str) -> timedelta:
    """A :func:`duration` from now that ends before the year 9999 (``import --expire``)."""
    try:
        expire = timedelta(seconds=duration(text))
        datetime.now(UTC) + expire  # raises OverflowError past the year 9999
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} ends after the year 9999") from None
    if expire <= timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than a microsecond")
    return expire


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9469`` for IPv6; without a host, 127.0.0.1) -> (host, port)."""
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r} is not an address such as 127.0.0.1:9469")
    return host.strip("[]") or "127.0.0.1", int(port)


def period(text: str) -> float:
    """A :func:`duration` of a second or more (``daemon --interval``, ``--resync``): shorter, the
    daemon would fetch and reconcile without rest (``--interval 1ms`` fetched 20 times a second)."""
    if (seconds := duration(text)) < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than the minimum of 1s")
    return seconds
