"""The daemon's log: standard ``logging``, one line per event, under the ``virt_reconcile`` logger.

A module with something to report logs through a logger named after it: ``virt_reconcile.daemon.loop``
(passes, each host's result, retries), ``…lanes`` (a host reconciled again with the other host of a
move, a lane's unexpected failure), ``…snapshots`` (a snapshot not published), ``…http`` (a
webhook refused: requests themselves are not logged) and ``…notify`` (a receiver failing, and
delivering again). The other modules decide (``decision``,
``verdict``) or keep state (``status``, ``metrics``, ``retries``, ``watchers``) and log nothing: the
loop reports what they decided. The program that runs the daemon decides where lines go with
:func:`configure_logging`; a library user (or a test with ``caplog``) configures ``logging`` as it
likes instead.

Every line starts with its time (ISO 8601, UTC, milliseconds) and level, so a log read outside the
journal still says when; a message of several lines (a traceback, a manifest error listing many
problems) is joined into one. ``--log-format json`` writes one JSON object per line instead:
``time``, ``level``, ``logger``, ``message``, and the fields a line was given (``extra=``) among
:data:`FIELDS` (``host``, ``revision`` ...), for a log collector to index.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from reconciler.adapters.gitsource import without_credentials

ROOT = "virt_reconcile"
FORMATS = ("text", "json")
#: The fields a log call may add with ``extra=`` that the JSON lines carry (when present).
FIELDS = ("host", "hosts", "revision", "result", "trigger", "peer", "code")

_HANDLER = "virt_reconcile.configured"  # the name of the handler configure_logging() installs


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO, fmt: str = "text") -> None:
    """Send the ``virt_reconcile`` loggers' lines at ``level`` and above to ``stream`` (stdout), as
    ``fmt`` says (``text`` or ``json``).

    Each line is flushed as it is written, so a supervisor (or a test reading the pipe) sees it at
    once. Calling it again replaces the earlier handler.
    """
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.set_name(_HANDLER)
    handler.setFormatter(JsonLines() if fmt == "json" else TextLines())
    logger.addHandler(handler)
    logger.setLevel(level)


def one_line(text: str) -> str:
    """``text`` as one log line: its lines joined with ``; `` (a manifest error lists many), with no
    URL's credentials (a git source's token)."""
    return without_credentials("; ".join(line.strip() for line in text.splitlines() if line.strip()))


def timestamp(record: logging.LogRecord) -> str:
    """When the record was made: ISO 8601 in UTC, to the millisecond (``2025-01-31T12:00:00.123Z``)."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextLines(logging.Formatter):
    """``TIME LEVEL message``, one line whatever the message and any traceback hold."""

    def format(self, record: logging.LogRecord) -> str:
        text = one_line(record.getMessage())
        if record.exc_info:
            text += " | " + one_line(self.formatException(record.exc_info))
        return f"{timestamp(record)} {record.levelname} {text}"


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the known fields given."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": one_line(record.getMessage()),
        }
        for name in FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info:
            line["exception"] = without_credentials(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class Once:
    """Remembers what was last said about each subject, so a condition that persists is logged
    when it starts, when its reason changes and when it ends, not at every poll."""

    def __init__(self) -> None:
        self._said: dict[str, str] = {}

    def new(self, subject: str, text: str) -> bool:
        """Whether ``text`` about ``subject`` differs from what was last said (and remember it)."""
        if self._said.get(subject) == text:
            return False
        self._said[subject] = text
        return True

    def clear(self, subject: str) -> bool:
        """Forget ``subject``'s condition; whether there was one (its end is worth a line)."""
        return self._said.pop(subject, None) is not None
