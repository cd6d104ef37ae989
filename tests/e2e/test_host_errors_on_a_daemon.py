"""Which libvirt errors the daemon retries, where only a running libvirtd can answer.

A driver name the daemon does not know is the daemon's answer, so permanent; a connection the
daemon's side dropped mid-session is the way to the host failing, so temporary. Without a daemon
both would be "connection refused" (tests/sandbox/test_host_errors.py covers that).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt.facts import daemon_facts
from reconciler.adapters.libvirt.host import LibvirtHypervisor
from reconciler.errors import HostError, PermanentHostError, TemporaryHostError
from tests.helpers import serve

LIBVIRTD_SOCKET = Path("/var/run/libvirt/libvirt-sock")


@pytest.fixture(autouse=True)
def _daemon_answers(conn: libvirt.virConnect) -> None:
    """Fail (as root) or skip unless the system libvirtd answers (the e2e conftest decides)."""


def test_a_driver_name_the_daemon_does_not_know_is_permanent():
    uri = "bogus+unix:///x"
    with pytest.raises(HostError) as raised:
        daemon_facts(uri)
    error = raised.value
    assert isinstance(error, PermanentHostError), error
    assert not error.retryable
    assert f"cannot connect to {uri}" in str(error)


def relay(path: Path, upstream: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A unix socket at ``path`` relaying to ``upstream``; the returned list holds its connections."""
    open_sockets: list[socket.socket] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def connect(client: socket.socket) -> None:
        daemon = socket.socket(socket.AF_UNIX)
        try:
            daemon.connect(str(upstream))
        except OSError:
            client.close()  # libvirt sees the connection end instead of waiting forever
            daemon.close()
            return
        open_sockets.extend([client, daemon])
        threading.Thread(target=pump, args=(client, daemon), daemon=True).start()
        threading.Thread(target=pump, args=(daemon, client), daemon=True).start()

    return serve(path, connect), open_sockets


def test_a_connection_lost_mid_session_is_temporary(tmp_path: Path):
    # Once the daemon's side is gone, libvirt answers the first call with a system error and every
    # later one with INTERNAL_ERROR from its RPC layer ("client socket is closed"): both retryable.
    server, open_sockets = relay(tmp_path / "relay", LIBVIRTD_SOCKET)
    try:
        conn = libvirt.open(f"test+unix:///default?socket={tmp_path}/relay")
    except libvirt.libvirtError as err:
        server.close()
        pytest.fail(f"libvirtd does not serve the test driver: {err}")
    try:
        hypervisor = LibvirtHypervisor("hv1", conn)
        assert hypervisor.observe().cpus > 0
        for sock in open_sockets:
            sock.shutdown(socket.SHUT_RDWR)
        codes = []
        for _ in range(2):
            with pytest.raises(TemporaryHostError) as raised:
                hypervisor.observe()
            codes.append(raised.value.__cause__.get_error_code())
        assert codes[-1] == libvirt.VIR_ERR_INTERNAL_ERROR
    finally:
        server.close()
        conn.close()
