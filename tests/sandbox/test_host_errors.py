"""Which libvirt errors the daemon retries: real errors from libvirt's client and test driver.

A temporary error (the way to the host failed) is retried with backoff; a permanent one (a wrong
address, refused credentials, a request the driver rejects) waits for new input instead, since
retrying it would fail the same way forever.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt.facts import daemon_facts
from reconciler.adapters.libvirt.host import LibvirtHypervisor
from reconciler.errors import HostError, PermanentHostError, TemporaryHostError
from tests.helpers import serve


def opening_error(uri: str) -> HostError:
    """The error the adapter raises when it cannot open ``uri``."""
    with pytest.raises(HostError) as raised:
        daemon_facts(uri)
    return raised.value


def test_an_address_without_a_driver_name_is_permanent():
    # A driver name a daemon does not know is answered by that daemon (tests/e2e).
    uri = "no-scheme-at-all"
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
