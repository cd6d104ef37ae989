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
silent without closing; a :class:`HungSocket` accepts and never answers (one asyncio thread runs
both). Nothing is left behind; a folder left by a killed run is swept by the next lab.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import libvirt

T = TypeVar("T")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

LAB_USER = "vr-fleet"
LIBVIRTD = Path("/usr/sbin/libvirtd")
SETPRIV = "setpriv"
PREFIX = "vr-fleet-"
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


class _Loop:
    """One asyncio event loop in one background thread, serving every socket of one lab."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fleetlab-net", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the loop and return its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Cancel every task (the connections end), then stop the loop and its thread."""

        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class _Endpoint:
    """A unix socket the lab listens on; subclasses say what a connection gets."""

    def __init__(self, net: _Loop, path: Path) -> None:
        self.path = path
        self.accepted = 0  # connections accepted so far
        self._net = net
        self._writers: set[asyncio.StreamWriter] = set()
        self._server = net.call(asyncio.start_unix_server(self._serve, path=str(path)))

    @property
    def uri(self) -> str:
        """The test driver's URI through this socket."""
        return socket_uri(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop listening and close every connection; the socket file goes."""
        with contextlib.suppress(Exception):
            self._net.call(self._close())
        self.path.unlink(missing_ok=True)

    async def _close(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()


class HungSocket(_Endpoint):
    """A host that accepts connections and never answers: what it is sent is read and dropped, and
    a connection stays open until the client closes it (or the lab ends)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(65536):
                pass
        writer.close()
        self._writers.discard(writer)


class LatencyProxy(_Endpoint):
    """Forwards each connection to ``target`` with a one-way delay of half the round trip on every
    chunk: chunks keep their order, and each waits only its own delay (latency, not a bandwidth cap).
    :meth:`go_silent` stops forwarding both ways without closing anything; :meth:`resume` delivers
    what was held and goes on."""

    def __init__(self, net: _Loop, path: Path, target: Path, latency_ms: float = 0.0) -> None:
        self.target = target
        self.delay = latency_ms / 2000.0  # seconds, one way
        self._live = asyncio.Event()
        self._live.set()
        self._trigger = b""  # go silent on the first client chunk that holds it (b"": never)
        super().__init__(net, path)

    def go_silent(self) -> None:
        """From now on nothing passes either way; connections stay open (a host that stopped answering)."""
        self._net.call(self._set(live=False))

    def go_silent_on(self, pattern: bytes) -> None:
        """Go silent, once, as soon as a client sends ``pattern`` (that chunk is held too): a host
        that stops answering at an exact point of a session, e.g. the ``defineXML`` of one domain."""
        self._net.call(self._set(trigger=pattern))

    def resume(self) -> None:
        """Forward again, starting with what was held while silent."""
        self._net.call(self._set(live=True))

    async def _set(self, *, live: bool | None = None, trigger: bytes | None = None) -> None:
        """Change the switch or the trigger on the loop's own thread."""
        if live is not None:
            (self._live.set if live else self._live.clear)()
        if trigger is not None:
            self._trigger = trigger

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        except OSError:
            writer.close()  # the client sees the connection end instead of waiting forever
            return
        pair = {writer, up_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))
        except asyncio.CancelledError:
            pass  # the lab is closing (asyncio 3.11 would print a cancelled connection task)
        finally:
            for each in pair:
                each.close()
            self._writers -= pair

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool) -> None:
        """Read chunks as they come, each stamped with when it is due; a second task delivers them.
        Chunks from the client are searched for the silence trigger (across chunk boundaries)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver(queue, sink))
        tail = b""
        try:
            while True:
                try:
                    data = await source.read(65536)
                except OSError:
                    data = b""
                if upstream and self._trigger and self._trigger in tail + data:
                    self._trigger = b""
                    self._live.clear()
                tail = (tail + data)[-len(self._trigger) :] if upstream and self._trigger else b""
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter) -> None:
        """Write each chunk when it is due and the proxy is not silent; an empty chunk ends the sink."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            await self._live.wait()
            if not data:
                sink.close()
                return
            sink.write(data)
            try:
                await sink.drain()
            except OSError:
                return


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
        self.started_in = 0.0  # seconds from the first spawn until every daemon answered
        self._net: _Loop | None = None
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
        """Start every daemon at once, then wait until each answers; on any failure stop what was
        started and raise :class:`LabError` saying why."""
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
            self._net = _Loop()
            began = time.monotonic()
            for index in range(self.count):  # appended one by one: a failure still stops those started
                self.hosts.append(self._spawn(f"hv{index:02d}", uid, gid))
            self._wait_until_all_answer(began + self.start_timeout)
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

    def _socket_path(self, kind: str) -> Path:
        assert self.folder is not None
        self._sockets += 1
        return self.folder / f"{kind}-{self._sockets}.sock"

    def proxy(self, target: LabHost | Path, latency_ms: float = 0.0) -> LatencyProxy:
        """A new proxy to a host's daemon (or to any unix socket), with its own socket and its own
        silent switch."""
        assert self._net is not None
        name, upstream = (target.name, target.socket) if isinstance(target, LabHost) else ("to", target)
        endpoint = LatencyProxy(self._net, self._socket_path(f"proxy-{name}"), upstream, latency_ms)
        self._endpoints.append(endpoint)
        return endpoint

    def hung(self) -> HungSocket:
        """A new socket that accepts connections and never answers them."""
        assert self._net is not None
        endpoint = HungSocket(self._net, self._socket_path("hung"))
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
        """Close the kept connections and the lab's sockets, stop every daemon by its PID (TERM, then
        KILL after 10 s) and remove the lab's folder. Safe to call twice."""
        for host in self.hosts:
            if host.conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    host.conn.close()
                host.conn = None
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()
        if self._net is not None:
            self._net.close()
            self._net = None
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
