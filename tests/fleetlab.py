"""A lab of many real hypervisors on this machine: one libvirtd per host, each serving libvirt's test
driver over its real remote protocol, plus sockets that misbehave on purpose.

``with FleetLab(hosts=20, latency_ms=20) as lab:`` starts 20 libvirtd daemons at once and waits
until each answers (a quarter of a second in all); on the way out it stops each by its PID, never
by name (other libvirtds here are never touched). A :class:`LabHost` has ``name``, ``uri`` for a
Host manifest (through a latency proxy when ``latency_ms`` is set), ``direct_uri`` and ``define``.

* A daemon runs as the system user ``vr-fleet`` (made with ``useradd`` when absent): ``setpriv``
  drops to it and sets the parent-death signal, so it dies with the thread that started it, even
  killed (start the lab from a thread that outlives it, such as the main thread). Not being root,
  libvirtd is a *session* daemon: its folders come from ``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``
  and ``XDG_CACHE_HOME`` (all in ``/tmp/vr-fleet-*/hvNN/``), its socket is
  ``$XDG_RUNTIME_DIR/libvirt/libvirt-sock``, and ``--timeout 0`` keeps it from exiting when idle.
* Root connects as ``test+unix:///default?socket=PATH`` with nothing set up: the socket and its
  folder are mode 0700, owned by ``vr-fleet``, which root's file-permission override passes; a
  session daemon's socket needs no authentication (``auth_unix_rw = "none"``, no polkit), and
  libvirtd 9.0 takes a client of another uid (checked). The config file written for each daemon
  says so anyway, so the lab does not rely on defaults.
* ``LIBVIRT_DRIVER_DIR`` is an empty folder: the test driver is built into libvirt0's
  ``libvirt.so`` (no Debian package of its own), so no driver module loads or probes ``/dev/kvm``,
  dnsmasq or D-Bus. ``test:///default`` lives while a connection to its daemon is open: the lab
  keeps one open to each daemon for its whole life (``LabHost.conn``).

A :class:`LatencyProxy` delays each chunk by the one-way delay (in order, side by side) and can go
silent without closing (at once, or on a byte pattern a client sends); a :class:`HungSocket` accepts
and never answers. Both are served by the lab's *network process* (``tests/fleetnet.py``, one
asyncio loop, the standard library only), not by the process under test: forwarding every chunk of
libvirt's traffic in Python would compete with the client for its interpreter, which a real network
never does.

* ``FleetLab`` starts it with the daemons (``python -I -S tests/fleetnet.py PID`` in its own session,
  its log in the lab's folder) and drives it through its standard input and output. The objects
  :meth:`FleetLab.proxy` and :meth:`FleetLab.hung` return are handles: each method
  (``go_silent``, ``go_silent_on``, ``resume``, ``close``, the ``accepted`` count) sends a command
  and returns once the network process applied it, so what a test does next sees the change.
* It dies with the lab's process, even a killed one: the kernel sends it SIGTERM when the thread
  that started the lab ends (``PR_SET_PDEATHSIG``, asked for by the process itself, as ``setpriv``
  does for the daemons), and it also ends when its standard input does. ``close()`` stops it by
  its PID (SIGTERM, KILL after 10 s) and waits for it; it removes every socket it listens on as it
  ends. ``network_pid`` is its PID while the lab runs.

Nothing is left behind; a folder left by a killed run is swept by the next lab.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

LAB_USER = "vr-fleet"
LIBVIRTD = Path("/usr/sbin/libvirtd")
SETPRIV = "setpriv"
PREFIX = "vr-fleet-"
#: The lab's network process: every proxy and hung socket, served outside the process under test.
NETWORK_SCRIPT = Path(__file__).with_name("fleetnet.py")
#: Set in the environment, lets the reconciler accept the lab's URIs (they name a socket).
ALLOW_SOCKET_ENV = {"VIRT_RECONCILE_ALLOW_URI_PARAMS": "socket"}
#: Over the test driver's 16 CPUs and 3 GiB (its ``test`` domain has 8 GiB): the policy would refuse.
LAB_CAPACITY = {"cpus": 256, "memory": "1TiB"}
#: Each daemon's libvirtd.conf: its socket for its user (and root) only, no authentication, errors logged.
DAEMON_CONFIG = 'unix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\nlog_outputs = "3:stderr"\n'


class LabError(RuntimeError):
    """The lab could not be set up or started (no root, no libvirtd, a daemon that did not answer)."""


def socket_uri(path: Path) -> str:
    """The URI of libvirt's test driver behind the daemon (or stand-in) listening on ``path``."""
    return f"test+unix:///default?socket={path}"


def host_document(name: str, uri: str, *, labels: Mapping[str, str] | None = None, **spec: Any) -> dict:
    """A Host manifest document for a lab host (or any socket), with a capacity the policy accepts."""
    metadata: dict[str, Any] = {"name": name, **({"labels": dict(labels)} if labels else {})}
    body = {"uri": uri, "capacity": dict(LAB_CAPACITY), **spec}
    return {"apiVersion": "virt-reconcile/v1", "kind": "Host", "metadata": metadata, "spec": body}


def plain_domain_xml(name: str, *, memory_mib: int = 64, vcpus: int = 1) -> str:
    """A small unmanaged domain definition, for seeding hosts quickly."""
    return (
        f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
        f"<vcpu>{vcpus}</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    )


def ensure_user(name: str = LAB_USER) -> tuple[int, int]:
    """The uid and gid of the lab's system user, created (no home, no shell) when absent."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        command = ["useradd", "--system", "-U", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", name]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode not in (0, 9):  # 9: created meanwhile by another run
            raise LabError(f"cannot create the lab user {name}: {done.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class _Network:
    """The lab's network process (``tests/fleetnet.py``): it owns every proxy and hung socket of
    the lab, and applies each command before it answers. One command at a time, from any thread."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "network.log"
        command = [sys.executable, "-I", "-S", str(NETWORK_SCRIPT), str(os.getpid())]
        with self.log.open("wb") as log:
            # its own session, like the daemons: a Ctrl-C meant for the tests reaches it through close()
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True
            )
        self._lock = threading.Lock()
        self._sent = 0  # the last command's number (0 is the line that says the loop is up)
        self._received = b""  # read from the process, not yet a whole line
        self._closed = False

    @property
    def pid(self) -> int:
        """The network process's PID."""
        return self.process.pid

    def wait_ready(self, deadline: float) -> None:
        """Wait until the process says its loop is up (it starts while the daemons do)."""
        with self._lock:
            self._answer(0, deadline)

    def call(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        """Send one command and return its result once the process has applied it."""
        with self._lock:
            if self._closed:
                raise LabError(f"the lab's network is closed ({op})")
            self._sent += 1
            number = self._sent
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(json.dumps({"seq": number, "op": op, **args}).encode() + b"\n")
                self.process.stdin.flush()
            except OSError as err:
                raise LabError(f"the lab's network process is gone: {self._tail()}") from err
            answer = self._answer(number, time.monotonic() + timeout)
        if not answer["ok"]:
            raise LabError(f"the lab's network refused a command: {answer['error']}")
        return answer.get("result")

    def _answer(self, number: int, deadline: float) -> dict[str, Any]:
        """Read answer lines until the one to command ``number`` (a late answer to an earlier command
        that timed out is skipped); fail at the deadline or when the process ends."""
        assert self.process.stdout is not None
        pipe = self.process.stdout.fileno()
        while True:
            while b"\n" not in self._received:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pipe], [], [], left)[0]:
                    raise LabError(f"the lab's network did not answer in time: {self._tail()}")
                chunk = os.read(pipe, 65536)
                if not chunk:
                    raise LabError(f"the lab's network process exited: {self._tail()}")
                self._received += chunk
            line, _, self._received = self._received.partition(b"\n")
            answer: dict[str, Any] = json.loads(line)
            if answer["seq"] == number:
                return answer

    def _tail(self, lines: int = 5) -> str:
        """The last lines of the process's log, for an error message."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def close(self) -> None:
        """Stop the process by its PID (it closes and removes every socket it listens on), wait for
        it, and close the pipes. Safe to call twice."""
        with self._lock:
            self._closed = True
        _stop([self.process])
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class _Endpoint:
    """A unix socket the lab's network process listens on: a handle whose every command returns
    once the process applied it; subclasses say what a connection gets."""

    kind = ""  # the network process's name for it

    def __init__(self, network: _Network, path: Path, **options: Any) -> None:
        self.path = path
        self._network = network
        network.call("listen", path=str(path), kind=self.kind, **options)

    @property
    def uri(self) -> str:
        """The test driver's URI through this socket."""
        return socket_uri(self.path)

    @property
    def accepted(self) -> int:
        """How many connections this socket accepted so far (asked of the network process)."""
        return int(self._command("accepted"))

    def _command(self, op: str, **args: Any) -> Any:
        """One command about this endpoint, applied when it returns."""
        return self._network.call(op, path=str(self.path), **args)

    def close(self) -> None:
        """Stop listening and close every connection; the socket file goes."""
        with contextlib.suppress(LabError):
            self._command("close")
        self.path.unlink(missing_ok=True)


class HungSocket(_Endpoint):
    """A host that accepts connections and never answers: what it is sent is read and dropped, and
    a connection stays open until the client closes it (or the lab ends)."""

    kind = "hung"


class LatencyProxy(_Endpoint):
    """Forwards each connection to ``target`` with a one-way delay of half the round trip on every
    chunk: chunks keep their order, and each waits only its own delay (latency, not a bandwidth cap).
    :meth:`go_silent` stops forwarding both ways without closing anything; :meth:`resume` delivers
    what was held and goes on. A connection whose ``target`` refuses it is closed."""

    kind = "proxy"

    def __init__(self, network: _Network, path: Path, target: Path, latency_ms: float = 0.0) -> None:
        self.target = target
        self.delay = latency_ms / 2000.0  # seconds, one way
        super().__init__(network, path, target=str(target), latency_ms=latency_ms)

    def go_silent(self) -> None:
        """From now on nothing passes either way; connections stay open (a host that stopped answering)."""
        self._command("silent")

    def go_silent_on(self, pattern: bytes) -> None:
        """Go silent, once, as soon as a client sends ``pattern`` (that chunk is held too): a host
        that stops answering at an exact point of a session, e.g. the ``defineXML`` of one domain.
        The pattern is found across chunk boundaries."""
        self._command("silent_on", pattern=pattern.hex())

    def resume(self) -> None:
        """Forward again, starting with what was held while silent."""
        self._command("resume")


@dataclass
class LabHost:
    """One hypervisor of the lab: a libvirtd process, its socket, the connection kept open to it
    (which keeps its test driver's state alive), and the proxy Host manifests go through, if any."""

    name: str
    folder: Path
    process: subprocess.Popen[bytes]
    conn: libvirt.virConnect | None = None
    proxy: LatencyProxy | None = None

    @property
    def pid(self) -> int:
        """The daemon's PID (``setpriv`` executes libvirtd in the same process)."""
        return self.process.pid

    @property
    def socket(self) -> Path:
        """The session daemon's socket: ``$XDG_RUNTIME_DIR/libvirt/libvirt-sock``."""
        return self.folder / "run" / "libvirt" / "libvirt-sock"

    @property
    def direct_uri(self) -> str:
        """The daemon itself, without the proxy."""
        return socket_uri(self.socket)

    @property
    def uri(self) -> str:
        """What a Host manifest should use: through the latency proxy when the lab has one."""
        return self.proxy.uri if self.proxy is not None else self.direct_uri

    def connection(self) -> libvirt.virConnect:
        """The connection the lab keeps open to this daemon (safe to share between threads)."""
        if self.conn is None:
            raise LabError(f"{self.name} is not running")
        return self.conn

    def define(self, xml: str) -> None:
        """Define one domain directly on this host."""
        self.connection().defineXML(xml)

    def domain_names(self) -> set[str]:
        """Every domain this host holds, active or not."""
        return {dom.name() for dom in self.connection().listAllDomains()}

    def document(self, *, labels: Mapping[str, str] | None = None, **spec: Any) -> dict:
        """This host's Host manifest document (``uri`` through the proxy when there is one)."""
        return host_document(self.name, spec.pop("uri", self.uri), labels=labels, **spec)


class FleetLab:
    """``hosts`` libvirtd daemons, each a distinct hypervisor, reached directly or through latency
    proxies; use it as a context manager (everything is stopped and removed on the way out)."""

    #: Where labs live: short, and open to the lab user (a unix socket path holds 107 bytes at most).
    BASE = Path("/tmp")

    def __init__(self, hosts: int = 3, latency_ms: float = 0.0, *, start_timeout: float = 30.0) -> None:
        self.count = hosts
        self.latency_ms = latency_ms
        self.start_timeout = start_timeout
        self.hosts: list[LabHost] = []
        self.folder: Path | None = None
        self.started_in = 0.0  # seconds from the first spawn until every daemon and the network answered
        self._network: _Network | None = None
        self._endpoints: list[_Endpoint] = []
        self._sockets = 0

    def __enter__(self) -> FleetLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> LabHost:
        return next(host for host in self.hosts if host.name == name)

    def start(self) -> None:
        """Start the network process and every daemon at once, then wait until each answers; on any
        failure stop what was started and raise :class:`LabError` saying why."""
        if os.geteuid() != 0:
            raise LabError("the fleet lab starts libvirtd daemons as another user: it needs root")
        if not LIBVIRTD.exists() or shutil.which(SETPRIV) is None:
            raise LabError(f"{LIBVIRTD} or {SETPRIV} is missing (make test-fleet installs libvirt-daemon)")
        uid, gid = ensure_user()
        _sweep_stale(self.BASE)
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.BASE))
        atexit.register(self.close)
        try:
            self.folder.chmod(0o711)  # the lab user walks through to its own folders
            (self.folder / "owner").write_text(f"{os.getpid()}\n")
            (self.folder / "drivers").mkdir()
            began = time.monotonic()
            self._network = _Network(self.folder)  # it starts while the daemons do
            for index in range(self.count):  # appended one by one: a failure still stops those started
                self.hosts.append(self._spawn(f"hv{index:02d}", uid, gid))
            self._wait_until_all_answer(began + self.start_timeout)
            self._network.wait_ready(began + self.start_timeout)
            self.started_in = time.monotonic() - began
            if self.latency_ms > 0:
                for host in self.hosts:
                    host.proxy = self.proxy(host, self.latency_ms)
        except BaseException:
            self.close()
            raise

    def _spawn(self, name: str, uid: int, gid: int) -> LabHost:
        """Start one session daemon as the lab user in its own folders; do not wait for it."""
        assert self.folder is not None
        folder = self.folder / name
        subs = {sub: folder / sub for sub in ("run", "config", "cache", "home")}
        for path in subs.values():
            path.mkdir(parents=True, mode=0o700)
        config = folder / "libvirtd.conf"
        config.write_text(DAEMON_CONFIG)
        for path in (folder, config, *subs.values()):
            os.chown(path, uid, gid)
        env = {f"XDG_{sub.upper()}_HOME": str(subs[sub]) for sub in ("config", "cache")}
        env |= {"XDG_RUNTIME_DIR": str(subs["run"]), "HOME": str(subs["home"]), "LC_ALL": "C"}
        env |= {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LIBVIRT_DRIVER_DIR": str(self.folder / "drivers")}
        drop = [SETPRIV, "--reuid", str(uid), "--regid", str(gid), "--clear-groups", "--pdeathsig", "TERM"]
        command = [*drop, str(LIBVIRTD), "--timeout", "0", "--config", str(config)]
        with (folder / "libvirtd.log").open("wb") as log:
            streams = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT}
            # its own session: a Ctrl-C meant for the tests reaches the daemons through close() only
            process = subprocess.Popen(command, env=env, cwd=subs["home"], start_new_session=True, **streams)
        return LabHost(name, folder, process)

    def _wait_until_all_answer(self, deadline: float) -> None:
        """Poll every daemon's socket until a connection opens (it is kept); fail on an exited
        daemon or at the deadline, with the end of its log."""
        pending = list(self.hosts)
        while pending:
            for host in list(pending):
                if host.process.poll() is not None:
                    raise LabError(f"libvirtd {host.name} exited ({host.process.returncode}): {_tail(host)}")
                if host.socket.exists():
                    with contextlib.suppress(libvirt.libvirtError):
                        host.conn = libvirt.open(host.direct_uri)
                        pending.remove(host)
            if pending and time.monotonic() > deadline:
                names = ", ".join(host.name for host in pending)
                raise LabError(f"libvirtd did not answer in time on {names}: {_tail(pending[0])}")
            if pending:
                time.sleep(0.01)

    @property
    def network_pid(self) -> int | None:
        """The PID of the lab's network process (every proxy and hung socket), None when stopped."""
        return self._network.pid if self._network is not None else None

    def _running_network(self) -> _Network:
        """The network process, or :class:`LabError` when the lab is not running."""
        if self._network is None:
            raise LabError("the lab is not running: start it before asking for proxies or hung sockets")
        return self._network

    def _socket_path(self, kind: str) -> Path:
        assert self.folder is not None
        self._sockets += 1
        return self.folder / f"{kind}-{self._sockets}.sock"

    def proxy(self, target: LabHost | Path, latency_ms: float = 0.0) -> LatencyProxy:
        """A new proxy to a host's daemon (or to any unix socket), with its own socket and its own
        silent switch."""
        name, upstream = (target.name, target.socket) if isinstance(target, LabHost) else ("to", target)
        network, path = self._running_network(), self._socket_path(f"proxy-{name}")
        endpoint = LatencyProxy(network, path, upstream, latency_ms)
        self._endpoints.append(endpoint)
        return endpoint

    def hung(self) -> HungSocket:
        """A new socket that accepts connections and never answers them."""
        endpoint = HungSocket(self._running_network(), self._socket_path("hung"))
        self._endpoints.append(endpoint)
        return endpoint

    def seed(self, xmls: Mapping[str, Iterable[str]]) -> None:
        """Define many domains directly, hosts side by side: ``{host name: [domain XML, ...]}``."""

        def define_all(name: str) -> None:
            for xml in xmls[name]:
                self[name].define(xml)

        with ThreadPoolExecutor(max(1, min(8, len(xmls)))) as pool:
            list(pool.map(define_all, xmls))

    def close(self) -> None:
        """Close the kept connections, stop the network process (every proxy and hung socket) and
        every daemon, each by its PID (TERM, then KILL after 10 s), and remove the lab's folder. Safe
        to call twice."""
        for host in self.hosts:
            if host.conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    host.conn.close()
                host.conn = None
        self._endpoints.clear()  # stopping the network closes them all and removes their sockets
        if self._network is not None:
            self._network.close()
            self._network = None
        _stop([host.process for host in self.hosts])
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.close)


def _stop(processes: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every process still running, wait for all of them, SIGKILL those past ``grace``."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _tail(host: LabHost, lines: int = 5) -> str:
    """The last lines of a daemon's log, for an error message."""
    log = host.folder / "libvirtd.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _sweep_stale(base: Path) -> None:
    """Remove the folders of labs whose process is gone (killed before it could clean up; its
    daemons died with it through the parent-death signal)."""
    for owner in base.glob(f"{PREFIX}*/owner"):
        with contextlib.suppress(OSError, ValueError):
            if not Path(f"/proc/{int(owner.read_text())}").exists():
                shutil.rmtree(owner.parent, ignore_errors=True)
