"""The command line as a process: entry points, unreachable hosts, exit codes."""

import argparse
import socket
import subprocess
import sys

import pytest

from reconciler import __version__
from reconciler.cli.commands import status
from reconciler.errors import StatusError
from tests.helpers import REPO, cli, write


def test_python_dash_m_and_the_console_script():
    by_module = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(REPO / "manifests")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert by_module.returncode == 0, by_module.stderr
    assert "valid: 1 host(s), 4 domain(s)" in by_module.stdout
    script = REPO / ".venv" / "bin" / "virt-reconcile"
    if script.exists():
        shown = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
        assert (shown.returncode, shown.stdout) == (0, f"virt-reconcile {__version__}\n")


def test_unreachable_host_is_an_error_naming_it(tmp_path):
    write(
        tmp_path,
        "h.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: gone}\n"
        f"spec: {{uri: 'test://{tmp_path}/missing-node.xml'}}\n",
    )
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n",
    )
    result = cli("plan", str(tmp_path))
    assert result.code == 1
    assert "gone: cannot connect to test://" in result.out
    applied = cli("apply", str(tmp_path))
    assert applied.code == 1
    assert "Apply failed: 0 action(s) done, 0 failed; errors or held domains on gone (above)." in applied.out


def test_any_libvirt_uri_works_as_a_host(tmp_path):
    write(
        tmp_path,
        "h.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: t}\n"
        "spec: {uri: 'test:///default', capacity: {cpus: 16, memory: 64GiB}}\n",
    )
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n",
    )
    result = cli("plan", str(tmp_path))
    assert result.code == 2 and "+ define a" in result.out
    # test:///default holds an unmanaged domain called 'test': never an orphan, never touched.
    assert "orphan" not in result.out


def test_a_daemon_that_does_not_answer_is_a_status_error(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result = cli("status", "--url", f"http://127.0.0.1:{port}")
        with pytest.raises(StatusError):  # retryable: the daemon may still be starting
            status.run(argparse.Namespace(url=f"http://127.0.0.1:{port}"))
    assert result.code == 1 and f"error: cannot read http://127.0.0.1:{port}/status" in result.err
