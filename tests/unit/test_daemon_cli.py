"""What ``virt-reconcile daemon`` refuses before it starts: periods so short it would never rest
(a usage error, exit 2) and an empty webhook secret (exit 1, nothing started)."""

from __future__ import annotations

import importlib

import pytest

from reconciler.cli.main import main

cli_main = importlib.import_module("reconciler.cli.main")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "500ms"], "argument --interval: '500ms' is shorter than the minimum of 1s"),
        (["--interval", "1ms"], "argument --interval: '1ms' is shorter than the minimum of 1s"),
        (["--resync", "0.5"], "argument --resync: '0.5' is shorter than the minimum of 1s"),
        (["--interval", "0s"], "argument --interval: '0s' is not a duration"),
    ],
)
def test_a_period_shorter_than_a_second_is_a_usage_error(argv: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as usage:
        cli_main.parse(cli_main.build_parser(), ["daemon", "--source", "x", *argv])
    assert usage.value.code == 2
    assert message in capsys.readouterr().err


def test_a_resync_shorter_than_the_interval_is_accepted():
    """The poller honours whichever is due first, so ``--interval 1h --resync 10m`` means what it says."""
    args = cli_main.parse(
        cli_main.build_parser(), ["daemon", "--source", "x", "--interval", "1h", "--resync", "1s"]
    )
    assert (args.interval, args.resync) == (3600.0, 1.0)


@pytest.mark.parametrize("content", [b"", b"   \n\t\n"], ids=["empty", "blank"])
def test_an_empty_webhook_secret_is_refused_at_start(tmp_path, capsys, monkeypatch, content: bytes):
    from reconciler.daemon import Daemon

    monkeypatch.setattr(Daemon, "run", lambda _daemon: pytest.fail("the daemon started"))
    secret = tmp_path / "webhook-secret"
    secret.write_bytes(content)
    argv = [
        "daemon",
        "--source",
        str(tmp_path),
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(tmp_path / "s"),
    ]
    assert main([*argv, "--webhook-secret-file", str(secret)]) == 1
    err = capsys.readouterr().err
    assert f"--webhook-secret-file {secret} is empty" in " ".join(err.split())
    assert not (tmp_path / "s").exists()  # refused before anything started


def test_a_bare_repository_given_as_a_folder_is_refused_with_the_url_to_use(tmp_path, capsys, monkeypatch):
    import subprocess

    from reconciler.daemon import Daemon

    monkeypatch.setattr(Daemon, "run", lambda _daemon: pytest.fail("the daemon started"))
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    argv = ["daemon", "--source", str(bare), "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "s")]
    assert main(argv) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"--source {bare} is a bare git repository" in err
    assert f"--source file://{bare.resolve()}" in err


def test_the_log_format_is_text_or_json(capsys):
    parser = cli_main.build_parser()
    assert cli_main.parse(parser, ["daemon", "--source", "x"]).log_format == "text"
    assert cli_main.parse(parser, ["daemon", "--source", "x", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit) as usage:
        cli_main.parse(parser, ["daemon", "--source", "x", "--log-format", "xml"])
    assert usage.value.code == 2 and "--log-format" in capsys.readouterr().err
