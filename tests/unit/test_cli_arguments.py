"""Option values with a format are checked by the parser: a wrong one is a usage error (exit 2)."""

from __future__ import annotations

import argparse
import importlib
from datetime import timedelta

import pytest

from reconciler.cli.argtypes import duration, expiry, listen_address
from reconciler.cli.main import main

cli_main = importlib.import_module("reconciler.cli.main")  # the module: ``reconciler.cli.main`` is main()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("24h", 86400.0), ("2", 2.0), ("1.5m", 90.0)],
)
def test_durations(text: str, seconds: float):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1 day", "5d", "0", "-5s", "nan", "inf", "1e400s", "ms"])
def test_what_is_not_a_duration(text: str):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a duration"):
        duration(text)


def test_an_expiry_is_a_duration_that_ends_in_a_representable_year():
    assert expiry("24h") == timedelta(hours=24)
    with pytest.raises(argparse.ArgumentTypeError, match="after the year 9999"):
        expiry(f"{9000 * 365 * 24}h")
    with pytest.raises(argparse.ArgumentTypeError, match="shorter than a microsecond"):
        expiry("1e-9s")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9469", ("127.0.0.1", 9469)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:8080", ("::1", 8080)),
        (":9469", ("127.0.0.1", 9469)),
        ("9469", ("127.0.0.1", 9469)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]):
    assert listen_address(text) == address


@pytest.mark.parametrize("text", ["localhost", "host:", "host:http", "host:70000", "host:-1", "host:²"])
def test_what_is_not_a_listen_address(text: str):
    with pytest.raises(argparse.ArgumentTypeError, match="is not an address"):
        listen_address(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["daemon", "--source", "x", "--interval", "soon"], "argument --interval: 'soon' is not a duration"),
        (["daemon", "--source", "x", "--resync=-1m"], "argument --resync: '-1m' is not a duration"),
        (
            ["daemon", "--source", "x", "--listen", "nowhere"],
            "argument --listen: 'nowhere' is not an address",
        ),
        (["import", "--host", "h", "--out", "o", "--expire", "1 day"], "argument --expire: '1 day'"),
    ],
)
def test_a_wrong_value_is_a_usage_error_naming_its_option(argv: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2
    assert message in capsys.readouterr().err


def test_the_daemon_gets_seconds_and_an_address():
    args = cli_main.parse(cli_main.build_parser(), ["daemon", "--source", "x"])
    assert (args.interval, args.resync, args.listen) == (30.0, 600.0, ("127.0.0.1", 9469))


def test_a_value_error_from_a_command_is_a_bug_not_a_user_error(monkeypatch):
    def broken(_args: argparse.Namespace) -> int:
        raise ValueError("a bug")

    monkeypatch.setattr(cli_main, "handler", lambda _command: broken)
    with pytest.raises(ValueError, match="a bug"):  # its traceback is kept, not turned into "error: ..."
        main(["validate"])
