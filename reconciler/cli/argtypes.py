"""Option values with a format, checked as argparse ``type=`` functions: a wrong one is a usage error
(exit 2) naming its option, before any command runs."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.daemon.notices import Receiver

__all__ = [
    "duration",
    "expiry",
    "label_selector",
    "listen_address",
    "notify_target",
    "period",
    "positive_count",
]


def duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` (a bare number is seconds) -> seconds, finite and above 0."""
    from reconciler.spec.durations import parse_duration  # the parser loads no model or spec module

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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


def label_selector(text: str) -> str:
    """A host label selector (``role=web,zone!=b``), checked now and kept as text."""
    from reconciler.spec.labels import Selector  # the parser loads no model or spec module

    try:
        Selector.parse([text])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def notify_target(text: str) -> Receiver:
    """A ``daemon --notify`` receiver (a webhook URL, ``slack+https://…``, ``github:OWNER/REPO?…``),
    or ``@FILE`` / ``env:NAME`` holding one (a secret URL kept out of the command line), checked now,
    its token file read once to be sure it holds a token."""
    from reconciler.daemon.notices import NotifyValueError, notify_value, parse_receiver, shown_value

    try:
        value = notify_value(text)
    except NotifyValueError as err:  # names the file or variable, never what it holds
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    where = f"{text!r}: " if value != text else ""  # read from a file or a variable: say which
    try:
        return parse_receiver(value)
    except NotifyValueError as err:  # the value shown without what may be a secret (a path, a query)
        raise argparse.ArgumentTypeError(f"{where}{shown_value(value)}: {err}") from None


def positive_count(text: str) -> int:
    """A whole number of 1 or more (``--host-parallel``)."""
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)
