"""The daemon logs through ``logging``; the program running it says where lines go."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from reconciler.daemon import logs
from reconciler.daemon.logs import ROOT, configure_logging


@pytest.fixture
def daemon_logger():
    logger = logging.getLogger(ROOT)
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_configure_logging_writes_one_line_per_event_once(daemon_logger):
    stream = io.StringIO()
    configure_logging(stream)
    configure_logging(stream)  # again: still one handler
    logging.getLogger("virt_reconcile.daemon.loop").info("hv1: applied at %s: %s", "abc", "no changes")
    logging.getLogger("virt_reconcile.daemon.loop").debug("not shown")
    assert stream.getvalue() == "hv1: applied at abc: no changes\n"


def test_each_daemon_module_that_logs_has_a_logger_named_after_it():
    """What the ``logs`` docstring says: a logger per module that logs, and those modules only."""
    folder = Path(logs.__file__).parent
    named = {}
    for module in folder.glob("*.py"):
        found = re.findall(r'getLogger\("([^"]+)"\)', module.read_text(encoding="utf-8"))
        if found:
            named[module.stem] = found
    assert named == {m: [f"{ROOT}.daemon.{m}"] for m in ("loop", "lanes", "snapshots", "http")}
    for module in named:
        assert f"``…{module}``" in (logs.__doc__ or "") or f"{ROOT}.daemon.{module}" in (logs.__doc__ or "")
