"""Which libvirt errors the daemon retries: real errors from libvirt's client and test driver.

A temporary error (the way to the host failed) is retried with backoff; a permanent one (a wrong
address, refused credentials, a request the driver rejects) waits for new input instead, since
retrying it would fail the same way forever.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt_host import LibvirtHypervisor, daemon_facts
from reconciler.errors import HostError, PermanentHostError, TemporaryHostError

LIBVIRTD_SOCKET = Path("/var/run/libvirt/libvirt-sock")


def opening_error(uri: str) -> HostError:
    """The error the adapter raises when it cannot open ``uri``."""
    with pytest.raises(HostError) as raised:
        daemon_facts(uri)
    return raised.value


@pytest.mark.parametrize(
    "uri",
    [
        "bogus+unix:///x",  # no such driver
        "no-scheme-at-all",  # a URI without a driver name
    ],
)
def test_an_address_no_driver_takes_is_permanent(uri: str):
    error = opening_error(uri)
    assert isinstance(error, PermanentHostError), error
    assert not error.retryable
    assert f"cannot connect to {uri}" in str(error)


def test_a_test_driver_file_that_cannot_be_read_is_permanent(tmp_path: Path):
    error = opening_error(f"test://{tmp_path}/missing.xml")
    assert isinstance(error, PermanentHostError), error


def test_a_daemon_socket_that_does_not_exist_is_temporary(tmp_path: Path):
    error = opening_error(f"test+unix:///default?socket={tmp_path}/missing.sock")
    assert isinstance(error, TemporaryHostError), error
    assert error.retryable


def serve(path: Path, answer: Callable[[socket.socket], None]) -> socket.socket:
    """A unix socket at ``path`` that hands each client to ``answer`` (a daemon gone wrong)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)

    def run() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # the server was closed
            answer(client)

    threading.Thread(target=run, daemon=True).start()
    return server


def hang_up(client: socket.socket) -> None:
    client.close()


def babble(client: socket.socket) -> None:
    client.recv(65536)
    client.sendall(b"\xff" * 64)  # not a libvirt RPC packet
    client.close()


@pytest.mark.parametrize("answer", [hang_up, babble], ids=["hangs up", "speaks no RPC"])
def test_a_daemon_that_breaks_the_connection_is_temporary(tmp_path: Path, answer):
    path = tmp_path / "sock"
    server = serve(path, answer)
    try:
        error = opening_error(f"test+unix:///default?socket={path}")
    finally:
        server.close()
    assert isinstance(error, TemporaryHostError), error


@pytest.fixture
def hypervisor() -> Iterator[LibvirtHypervisor]:
    conn = libvirt.open("test:///default")  # one running domain, "test"
    try:
        yield LibvirtHypervisor("hv1", conn, in_process=True)
    finally:
        conn.close()


def test_an_internal_error_of_the_driver_is_permanent(hypervisor: LibvirtHypervisor):
    # The test driver refuses to start a running domain with VIR_ERR_INTERNAL_ERROR, libvirt's
    # catch-all (QEMU refusing a configuration comes the same way): retrying will not help.
    with pytest.raises(PermanentHostError, match=r"start 'test'.*already running"):
        hypervisor.start("test")


def test_invalid_arguments_and_xml_are_permanent(hypervisor: LibvirtHypervisor):
    with pytest.raises(PermanentHostError, match="balloon 'test'"):
        hypervisor.set_current_memory("test", 1 << 50, None)  # above the domain's maximum
    with pytest.raises(PermanentHostError, match="define"):
        hypervisor.define("<domain type='test'><name>x</name><memory>1024</memory></domain")


def test_an_unknown_domain_is_permanent(hypervisor: LibvirtHypervisor):
    with pytest.raises(PermanentHostError, match="'nope'"):
        hypervisor.start("nope")


def relay(path: Path, upstream: str) -> tuple[socket.socket, list[socket.socket]]:
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
        daemon.connect(upstream)
        open_sockets.extend([client, daemon])
        threading.Thread(target=pump, args=(client, daemon), daemon=True).start()
        threading.Thread(target=pump, args=(daemon, client), daemon=True).start()

    return serve(path, connect), open_sockets


@pytest.mark.skipif(not os.access(LIBVIRTD_SOCKET, os.W_OK), reason="no libvirtd socket to talk to")
def test_a_connection_lost_mid_session_is_temporary(tmp_path: Path):
    # Once the daemon's side is gone, libvirt answers the first call with a system error and every
    # later one with INTERNAL_ERROR from its RPC layer ("client socket is closed"): both retryable.
    server, open_sockets = relay(tmp_path / "relay", str(LIBVIRTD_SOCKET))
    try:
        conn = libvirt.open(f"test+unix:///default?socket={tmp_path}/relay")
    except libvirt.libvirtError as err:
        server.close()
        pytest.skip(f"libvirtd does not serve the test driver here: {err}")
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
