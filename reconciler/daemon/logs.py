"""The daemon's log: standard ``logging``, one line per event, under the ``virt_reconcile`` logger.

A module with something to report logs through a logger named after it: ``virt_reconcile.daemon.loop``
(passes, each host's result, retries), ``…lanes`` (a host reconciled again with the other host of a
move, a lane's unexpected failure), ``…snapshots`` (a snapshot not published) and ``…http`` (a
webhook refused: requests themselves are not logged). The other modules decide (``decision``,
``verdict``) or keep state (``status``, ``metrics``, ``retries``, ``watchers``) and log nothing: the
loop reports what they decided. The program that runs the daemon decides where lines go with
:func:`configure_logging`; a library user (or a test with ``caplog``) configures ``logging`` as it
likes instead.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

ROOT = "virt_reconcile"
LINE = "%(message)s"  # one event, one line; the journal (or the caller) adds the time


_HANDLER = "virt_reconcile.configured"  # the name of the handler configure_logging() installs


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send the ``virt_reconcile`` loggers' lines at ``level`` and above to ``stream`` (stdout).

    Each line is flushed as it is written, so a supervisor (or a test reading the pipe) sees it at
    once. Calling it again replaces the earlier handler.
    """
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.set_name(_HANDLER)
    handler.setFormatter(logging.Formatter(LINE))
    logger.addHandler(handler)
    logger.setLevel(level)


def one_line(text: str) -> str:
    """``text`` as one log line: its lines joined with ``; `` (a manifest error lists many)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
