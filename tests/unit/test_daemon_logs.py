"""The daemon logs through ``logging``; the program running it says where lines go."""

from __future__ import annotations

import io
import json
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
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO hv1: applied at abc: no changes\n", stream.getvalue()
    ), stream.getvalue()


def test_each_daemon_module_that_logs_has_a_logger_named_after_it():
    """What the ``logs`` docstring says: a logger per module that logs, and those modules only."""
    folder = Path(logs.__file__).parent
    named = {}
    for module in folder.glob("*.py"):
        found = re.findall(r'getLogger\("([^"]+)"\)', module.read_text(encoding="utf-8"))
        if found:
            named[module.stem] = found
    assert named == {m: [f"{ROOT}.daemon.{m}"] for m in ("loop", "lanes", "snapshots", "http", "notify")}
    for module in named:
        assert f"``…{module}``" in (logs.__doc__ or "") or f"{ROOT}.daemon.{module}" in (logs.__doc__ or "")


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_a_multi_line_message_and_its_traceback_are_one_text_line(daemon_logger):
    stream = io.StringIO()
    configure_logging(stream)
    log = logging.getLogger("virt_reconcile.daemon.lanes")
    log.warning("manifests invalid at abc:\n  a.yaml:3: spec.vcpus: not a number\n  b.yaml:1: bad")
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        log.exception("hv1: the lane's pass failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        STAMP + r" WARNING manifests invalid at abc:; a\.yaml:3: spec\.vcpus: not a number; b\.yaml:1: bad",
        lines[0],
    )
    assert re.match(STAMP + r" ERROR hv1: the lane's pass failed \| Traceback", lines[1])
    assert lines[1].endswith("ValueError: first line; second line")


def test_json_lines_carry_time_level_logger_message_and_the_known_fields(daemon_logger):
    stream = io.StringIO()
    configure_logging(stream, fmt="json")
    log = logging.getLogger("virt_reconcile.daemon.loop")
    log.warning("hv1: refused at %s:\nover", "abc", extra={"host": "hv1", "revision": "abc", "secret": "x"})
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert re.fullmatch(STAMP, record.pop("time"))
    assert record == {
        "level": "WARNING",
        "logger": "virt_reconcile.daemon.loop",
        "message": "hv1: refused at abc:; over",
        "host": "hv1",
        "revision": "abc",
    }


def test_once_says_a_lasting_condition_when_it_starts_changes_and_ends():
    once = logs.Once()
    assert once.new("source", "connection refused")
    assert not once.new("source", "connection refused")
    assert once.new("source", "no route to host")
    assert once.clear("source") and not once.clear("source")
    assert once.new("source", "connection refused")
