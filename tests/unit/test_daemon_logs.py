"""The daemon logs through ``logging``; the program running it says where lines go."""

from __future__ import annotations

import io
import logging

import pytest

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
