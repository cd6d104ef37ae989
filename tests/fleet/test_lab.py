"""The lab itself: many distinct daemons that answer, proxies that delay and go silent, a host that
hangs, all of the network in a process of its own, and nothing left behind, even by a killed run.
Timing checks are lower bounds, or bounds far from what is expected."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests import fleetlab
from tests.fleetlab import FleetLab, LabError, plain_domain_xml
from tests.helpers import REPO

#: How long the processes of a killed lab may take to die with it, at most (far above the
#: milliseconds expected: a process still there after it is a failure, not a slow run).
DEATH_DEADLINE = 30.0


def alive(pid: int) -> bool:
    """Whether a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs: a zombie (dead, not yet reaped by init) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def socket_inodes(path: Path) -> set[int]:
    """The inodes of every unix socket bound to ``path``: the listening one and those it accepted."""
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path):
            inodes.add(int(fields[6]))
    return inodes


def sockets_held_by(pid: int) -> set[int]:
    """The inodes of every socket process ``pid`` has open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def fastest_call(uri: str, calls: int = 5) -> float:
    """The quickest of a few cheap round trips (``getLibVersion``) on a new connection to ``uri``."""
    conn = libvirt.open(uri)
    try:
        times = []
        for _ in range(calls):
            began = time.monotonic()
            conn.getLibVersion()
            times.append(time.monotonic() - began)
        return min(times)
    finally:
        conn.close()


@contextlib.contextmanager
def echo_server(path: Path) -> Iterator[None]:
    """A unix socket at ``path`` that sends back whatever it receives, one thread per connection."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)

    def echo(client: socket.socket) -> None:
        with client:
            while data := client.recv(65536):
                client.sendall(data)

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield
    finally:
        server.close()


def test_twenty_daemons_answer_each_its_own_hypervisor(make_lab):
    lab = make_lab(hosts=20)
    assert len({host.pid for host in lab.hosts}) == 20
    for host in lab.hosts:
        assert os.readlink(f"/proc/{host.pid}/exe") == str(fleetlab.LIBVIRTD)  # libvirtd, not a wrapper
        uid = Path(f"/proc/{host.pid}/status").read_text().split("Uid:")[1].split()[0]
        assert int(uid) == fleetlab.ensure_user()[0]  # the unprivileged lab user
        assert host.connection().getType() == "TEST"
        assert host.domain_names() == {"test"}  # the test driver's default state, fresh per daemon
    lab.hosts[3].define(plain_domain_xml("only-on-hv03"))
    other = libvirt.open(lab.hosts[4].direct_uri)  # a second connection sees the same daemon's state
    try:
        assert [host.name for host in lab.hosts if "only-on-hv03" in host.domain_names()] == ["hv03"]
        assert "only-on-hv03" not in {dom.name() for dom in other.listAllDomains()}
    finally:
        other.close()


def test_seeding_two_hundred_domains_per_host(make_lab):
    lab = make_lab(hosts=3)
    lab.seed(
        {host.name: [plain_domain_xml(f"{host.name}-d{i:03d}") for i in range(200)] for host in lab.hosts}
    )
    for host in lab.hosts:
        names = host.domain_names() - {"test"}
        assert len(names) == 200 and all(name.startswith(host.name) for name in names)


def test_the_proxy_adds_the_round_trip(make_lab):
    lab = make_lab(hosts=1, latency_ms=40)
    host = lab.hosts[0]
    assert host.uri != host.direct_uri
    direct, proxied = fastest_call(host.direct_uri), fastest_call(host.uri)
    assert proxied >= 0.040 - 0.001, (direct, proxied)  # 20 ms each way, at least
    assert proxied > direct


def test_the_proxy_delays_chunks_side_by_side_in_order(make_lab, tmp_path):
    """Latency, not a queue: 20 chunks sent 10 ms apart through 100 ms each way (to an echo server
    and back) all return in about 0.2 + 0.19 s; a proxy delaying them one after another would need
    at least 20 × 0.2 = 4 s. The bound checked is half of that."""
    lab = make_lab(hosts=1)
    with echo_server(tmp_path / "echo.sock"):
        proxy = lab.proxy(tmp_path / "echo.sock", latency_ms=200)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(proxy.path))
        sent = [f"{i:03d};".encode() for i in range(20)]
        began = time.monotonic()
        for chunk in sent:
            client.sendall(chunk)
            time.sleep(0.01)
        received = b""
        client.settimeout(10)
        while len(received) < len(b"".join(sent)):
            received += client.recv(65536)
        elapsed = time.monotonic() - began
        client.close()
    assert received == b"".join(sent)
    assert 0.2 <= elapsed < 2.0, elapsed


def test_the_proxy_serves_many_connections_at_once(make_lab):
    lab = make_lab(hosts=1, latency_ms=20)
    results: list[int] = []

    def call() -> None:
        conn = libvirt.open(lab.hosts[0].uri)
        try:
            results.append(conn.numOfDomains())
        finally:
            conn.close()

    threads = [threading.Thread(target=call) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [1] * 40
    assert lab.hosts[0].proxy is not None and lab.hosts[0].proxy.accepted == 40


def test_a_silent_proxy_holds_everything_and_closes_nothing(make_lab, tmp_path):
    lab = make_lab(hosts=1)
    with echo_server(tmp_path / "echo.sock"):
        proxy = lab.proxy(tmp_path / "echo.sock")
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(proxy.path))
        client.settimeout(10)
        client.sendall(b"before")
        assert client.recv(100) == b"before"
        proxy.go_silent()
        client.sendall(b"during")
        client.settimeout(1)
        with pytest.raises(TimeoutError):
            client.recv(100)  # no answer, and no end of the connection either (recv would give b"")
        proxy.resume()
        client.settimeout(10)
        assert client.recv(100) == b"during"
        client.close()


def test_a_proxy_goes_silent_on_a_pattern_even_split_across_chunks(make_lab, tmp_path):
    lab = make_lab(hosts=1)
    with echo_server(tmp_path / "echo.sock"):
        proxy = lab.proxy(tmp_path / "echo.sock")
        proxy.go_silent_on(b"<name>vm0</name>")
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(proxy.path))
        client.settimeout(10)
        client.sendall(b"<name>vm1</name>")
        assert client.recv(100) == b"<name>vm1</name>"
        client.sendall(b"define <name>v")
        assert client.recv(100) == b"define <name>v"  # not the pattern yet: forwarded
        client.sendall(b"m0</name>")
        client.settimeout(1)
        with pytest.raises(TimeoutError):
            client.recv(100)  # the chunk that completed the pattern is held
        proxy.resume()
        client.settimeout(10)
        assert client.recv(100) == b"m0</name>"
        client.close()


def test_the_hung_socket_accepts_and_never_answers(make_lab):
    lab = make_lab(hosts=1)
    hung = lab.hung()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(hung.path))
    client.sendall(b"\x00\x00\x00\x1c hello, libvirtd?")
    client.settimeout(1.5)
    with pytest.raises(TimeoutError):
        client.recv(100)  # b"" would mean it closed the connection
    assert hung.accepted == 1
    client.close()
    assert hung.uri == f"test+unix:///default?socket={hung.path}"


def test_a_proxy_whose_target_refuses_closes_the_client_connection(make_lab, tmp_path):
    lab = make_lab(hosts=1)
    proxy = lab.proxy(tmp_path / "nobody-listens.sock")
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(proxy.path))
    client.settimeout(10)
    assert client.recv(100) == b""  # the end of the connection, not a wait for an answer
    client.close()
    assert proxy.accepted == 1


def test_the_network_runs_in_a_process_of_its_own(make_lab):
    """Every listening socket of the proxies and the hung socket, and every connection they accept,
    is held by the network process and none by the process under test."""
    lab = make_lab(hosts=2, latency_ms=10)
    hung = lab.hung()
    network = lab.network_pid
    assert network is not None and network != os.getpid() and running(network)
    conn = libvirt.open(lab.hosts[0].uri)  # one connection through a proxy, open while checking
    hung_client = socket.socket(socket.AF_UNIX)
    hung_client.connect(str(hung.path))
    try:
        assert conn.numOfDomains() == 1
        assert hung.accepted == 1
        paths = [hung.path, *(host.proxy.path for host in lab.hosts if host.proxy is not None)]
        assert len(paths) == 3
        held_there, held_here = sockets_held_by(network), sockets_held_by(os.getpid())
        for path in paths:
            inodes = socket_inodes(path)
            assert inodes and inodes <= held_there, path
            assert not inodes & held_here, path
        assert len(socket_inodes(lab.hosts[0].proxy.path)) == 2  # listening, and the accepted one
    finally:
        hung_client.close()
        conn.close()


#: A lab in a process of its own: prints its PID, its folder and its processes' PIDs, then waits
#: for the end of its standard input.
KILLED_RUN = """
import os, sys
from tests.fleetlab import FleetLab
lab = FleetLab(hosts=2, latency_ms=10)
lab.start()
lab.hung()
print(os.getpid(), lab.folder, lab.network_pid, *(host.pid for host in lab.hosts), flush=True)
sys.stdin.read()
"""

#: Runs ``argv[1]`` as a Python child and becomes the subreaper of everything below it: the lab's
#: processes, orphaned when that child is killed, come here, are reaped as they die (no zombie is
#: left behind), and this process exits once none is left.
SUBREAPER = """
import ctypes, os, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def test_a_killed_run_leaves_nothing_once_the_next_lab_starts(make_lab):
    """SIGKILL gives a lab no chance to clean up: its network process and daemons die with it (the
    parent-death signal), and its folder, sockets included, goes when the next lab starts."""
    command = [sys.executable, "-c", SUBREAPER, KILLED_RUN]
    streams = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    with subprocess.Popen(command, cwd=REPO, text=True, **streams) as reaper:
        try:
            assert reaper.stdout is not None
            run, folder, *pids = reaper.stdout.readline().split()
            assert len(pids) == 3 and all(running(int(pid)) for pid in pids)
            assert Path(folder).is_dir() and list(Path(folder).glob("*.sock"))
            os.kill(int(run), signal.SIGKILL)
            try:
                reaper.wait(DEATH_DEADLINE)  # it ends once the run and every process below it ended
            except subprocess.TimeoutExpired:
                alive_after = [pid for pid in pids if running(int(pid))]
                pytest.fail(f"still running after the lab's process was killed: {alive_after}")
        finally:
            reaper.kill()
    assert not any(running(int(pid)) for pid in pids)
    make_lab(hosts=1)
    assert not Path(folder).exists()


def test_closing_leaves_nothing_behind(make_lab):
    lab = make_lab(hosts=4, latency_ms=10)
    hung = lab.hung()
    network = lab.network_pid
    assert network is not None and alive(network)
    proxy = lab.hosts[0].proxy
    assert proxy is not None
    pids = [host.pid for host in lab.hosts]
    sockets = [host.socket for host in lab.hosts] + [hung.path]
    sockets += [host.proxy.path for host in lab.hosts if host.proxy is not None]
    assert lab.folder is not None and all(path.exists() for path in sockets) and len(sockets) == 9
    assert all(alive(pid) for pid in pids)
    lab.close()
    assert not any(alive(pid) for pid in [*pids, network])  # each was waited for: not even a zombie
    assert lab.network_pid is None
    assert not lab.folder.exists()
    with pytest.raises(LabError, match="closed"):
        proxy.go_silent()  # a handle outliving its lab says so
    lab.close()  # twice is harmless


def test_a_daemon_that_cannot_start_is_an_error_and_nothing_is_left(monkeypatch):
    monkeypatch.setattr(fleetlab, "LIBVIRTD", Path("/bin/false"))
    lab = FleetLab(hosts=3)
    with pytest.raises(LabError, match="exited"):
        lab.start()
    assert lab.folder is not None and not lab.folder.exists()
    assert not any(alive(host.pid) for host in lab.hosts)


def test_a_network_that_cannot_start_is_an_error_and_nothing_is_left(monkeypatch, tmp_path):
    monkeypatch.setattr(fleetlab, "NETWORK_SCRIPT", tmp_path / "missing.py")
    lab = FleetLab(hosts=2)
    with pytest.raises(LabError, match=r"network process exited.*missing\.py"):
        lab.start()
    assert lab.folder is not None and not lab.folder.exists()
    assert lab.network_pid is None
    assert not any(alive(host.pid) for host in lab.hosts)
