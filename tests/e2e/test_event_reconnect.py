"""The daemon's event connection survives a cut: reopened with backoff, then drift looked for.

The daemon reaches the real libvirtd through a unix-socket proxy run by the test
(``qemu+unix:///system?socket=PROXY``), which can cut every connection and refuse new ones, as a
libvirtd restart or a dropped tunnel would. Before the daemon watched its event connection, nothing
reopened it until the next reconcile pass, up to ``--resync`` (an hour here) later: a guest stopped
during or after the cut stayed stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from reconciler.cli.parser import COMMANDS
from tests.daemon_helpers import DaemonProcess
from tests.e2e.conftest import E2E
from tests.helpers import write

LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"


class CuttableProxy:
    """Accepts on a unix socket and forwards each connection to ``target``, byte for byte.

    :meth:`cut` closes every forwarded connection and stops listening (the socket file stays, so a
    connect is refused, as when libvirtd is down); :meth:`restore` listens again.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.folder = Path(tempfile.mkdtemp(prefix="vr-proxy-"))  # short: unix socket paths are
        self.path = self.folder / "sock"  # limited to 108 bytes, and tmp_path can be longer
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listening = threading.Event()
        self._accepter: threading.Thread | None = None

    def restore(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        listener.settimeout(0.1)
        self._listening.set()
        self._accepter = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepter.start()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._listening.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
                with self._lock:
                    self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._listening.clear()
        if self._accepter is not None:
            self._accepter.join(timeout=5)  # the listener is closed: connects are refused
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.cut()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def proxy():
    running = CuttableProxy(LIBVIRT_SOCKET)
    running.restore()
    yield running
    running.close()


def wait(predicate, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def corrections(daemon: DaemonProcess) -> int:
    """The drift corrections the daemon has made on the host (each one a completed pass)."""
    metrics = daemon.get("/metrics")[1].decode()
    prefix = 'virt_reconcile_drift_corrections_total{host="local"} '
    found = [line.removeprefix(prefix) for line in metrics.splitlines() if line.startswith(prefix)]
    return int(float(found[0])) if found else 0


def manifests(e2e: E2E, uri: str) -> None:
    """One Host at ``uri`` and one guest that should be running."""
    host = {"apiVersion": "virt-reconcile/v1", "kind": "Host", "metadata": {"name": "local"}}
    host["spec"] = {"uri": uri}
    web = {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": {"name": e2e.name("web")}}
    web["spec"] = e2e.guest()
    write(e2e.root, "manifests.yaml", yaml.safe_dump_all([host, web], sort_keys=False))


def uri_options(monkeypatch) -> list[str]:
    """The operator's leave for the ``socket`` URI parameter: the environment variable, and the
    daemon's option where it has one."""
    monkeypatch.setenv("VIRT_RECONCILE_ALLOW_URI_PARAMS", "socket")
    daemon = argparse.ArgumentParser()
    next(command for command in COMMANDS if command.name == "daemon").arguments(daemon)
    if "--allow-uri-param" in daemon.format_help():
        return ["--allow-uri-param", "socket"]
    return []


def test_a_cut_event_connection_is_reopened_and_drift_corrected_long_before_the_resync(
    e2e, tmp_path, monkeypatch, proxy
):
    manifests(e2e, f"qemu+unix:///system?socket={proxy.path}")
    daemon = DaemonProcess(
        "--source",
        str(e2e.root),
        "--interval",
        "1h",
        "--resync",
        "1h",
        *uri_options(monkeypatch),
        state_dir=tmp_path / "state",
    )
    try:
        daemon.start()
        daemon.wait_for("local", result="applied", timeout=60)
        assert e2e.domain("web").isActive()
        # the apply's own events (defined, started) bring one drift pass: let it end, so that no
        # pass is under way at the cut, and no retry of a failed one can restart the guest later
        wait(lambda: any(" (drift): " in line for line in daemon.log), timeout=30)

        proxy.cut()  # libvirtd unreachable: the event connection ends, reopening is refused
        daemon.wait_for_line("local: event connection lost", timeout=30)
        daemon.wait_for_line("local: cannot open the event connection", timeout=10)
        e2e.domain("web").destroy()  # drift nobody can hear about
        time.sleep(1)
        assert not e2e.domain("web").isActive()

        proxy.restore()
        seconds = wait(lambda: corrections(daemon) == 1, timeout=30)  # the start has completed
        assert seconds < 20, "the daemon waited for the resync instead of reconnecting"
        assert e2e.domain("web").isActive()
        daemon.wait_for_line("local: event connection reopened", timeout=5)

        # listening again: a guest stopped now is started again by its event, as before the cut
        e2e.domain("web").destroy()
        assert wait(lambda: corrections(daemon) == 2, timeout=30) < 20
        assert e2e.domain("web").isActive()
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
