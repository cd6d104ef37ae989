"""Hosts opened while the manifests still load: a command's connections made beside its YAML.

Opening a host is mostly waiting, with the interpreter free meanwhile: a handshake over the network,
or libvirt's test driver reading a sandbox's state file (half a second for 2,000 domains). ``plan``
and ``apply`` hand each Host to :class:`EarlyOpens` as soon as its manifest file is loaded, its URI
already allowed by the operator's rules, and its connection opens in a thread of its own while the
other files load. :func:`reconciler.adapters.libvirt.host.open_host` then takes it instead of
opening anew:

* a remote host: the connection itself (opening one takes no lock: the apply lock is taken later,
  in the one global order);
* a sandbox: the test driver loaded from the state file as it was read then, taken only when the
  file, read again (under its lock, when writing), is still the same text: never a stale state.

An opening nobody takes (manifests refused in the end, a host left out by the selection) is closed;
one still under way then is closed by its own thread when it ends, so an error is never held up by
a host that does not answer. A failed opening is raised when taken, as opening it then would have.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import libvirt

from reconciler.adapters import sandbox
from reconciler.adapters.libvirt.connections import open_connection
from reconciler.spec.models import Host


@dataclass
class _Opening:
    """One host being opened early: the connection (or the error), and for a sandbox the state
    file's text it was loaded from."""

    host: Host  # a host taken must be this very host (same URI, timeouts, capacity...)
    done: threading.Event = field(default_factory=threading.Event)
    conn: libvirt.virConnect | None = None
    error: BaseException | None = None
    state: bytes | None = None  # a sandbox's state file as read (None: there was none)
    node_xml: str = ""  # and the node XML loaded from it
    abandoned: bool = False


class EarlyOpens:
    """Connections opened while the manifests load, for the first ``limit`` hosts ``wanted`` picks
    (the command's selection; ``--host-parallel``: as many hosts are opened early as the pass opens
    at once, so with the pass's own openings at most twice that many handshakes overlap); use it
    as a context manager: what is not taken is closed on the way out."""

    def __init__(self, wanted: Callable[[Host], bool], limit: int = 16) -> None:
        self._wanted = wanted
        self._limit = limit
        self._openings: dict[str, _Opening] = {}
        self._hypervisors: set[str] = set()  # one opening per hypervisor (two Hosts on one are refused)
        self._lock = threading.Lock()

    def __enter__(self) -> EarlyOpens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, host: Host) -> None:
        """Start opening ``host`` in a thread of its own, when it is wanted, fewer than ``limit``
        hosts were started, and neither its name nor its hypervisor was seen before (a second Host
        of either is an error of the manifests: nothing more is opened for it)."""
        key = host.spec.address.hypervisor_key
        with self._lock:
            seen = host.name in self._openings or key in self._hypervisors
            if seen or len(self._hypervisors) >= self._limit or not self._wanted(host):
                return
            opening = self._openings[host.name] = _Opening(host)
            self._hypervisors.add(key)
        threading.Thread(target=self._open, args=(host, opening), name="vr-early-open", daemon=True).start()

    def take(self, host: Host) -> libvirt.virConnect | None:
        """The connection opened early for this very host (raising what opening it raised); None
        when it was not opened early."""
        opening = self._claim(host)
        return opening.conn if opening is not None else None

    def take_sandbox(self, host: Host, state: sandbox.SandboxFile) -> tuple[libvirt.virConnect | None, str]:
        """The test driver loaded early for this sandbox host when its ``state`` file, read again
        now (under its lock, when writing), holds the same bytes as it did then; and the node XML
        to go on with (the early text, checked then: it is not parsed again). The early opening is
        awaited first, so the file's last read is this one; an early load that failed is not
        raised: the file read now, under the lock, says what holds."""
        try:
            opening = self._claim(host)
        except Exception:
            opening = None
        early = opening.conn if opening is not None else None
        try:
            now = state.read_bytes()
            if early is not None and opening is not None and opening.state == now:
                return early, opening.node_xml
            node_xml = _node_xml(host, state, now)
        except BaseException:
            if early is not None:
                _close(early)
            raise
        if early is not None:  # changed in between: load it again from what was read now
            _close(early)
        return None, node_xml

    def close(self) -> None:
        """Close every connection nobody took; one still opening closes itself when it ends."""
        with self._lock:
            openings, self._openings = list(self._openings.values()), {}
        for opening in openings:
            self._abandon(opening)

    def _abandon(self, opening: _Opening) -> None:
        """Close an opening's connection now if it is open, else when it opens (decided under the
        lock the opening threads end under: closed once)."""
        with self._lock:
            finished = opening.done.is_set()
            opening.abandoned = True
        if finished and opening.conn is not None:
            _close(opening.conn)

    def _claim(self, host: Host) -> _Opening | None:
        """This host's opening, awaited and no longer this object's to close; None when there is
        none for this very host. Raise what opening it raised."""
        with self._lock:
            opening = self._openings.pop(host.name, None)
        if opening is None:
            return None
        try:
            opening.done.wait()
        except BaseException:  # interrupted (Ctrl-C): the connection is nobody's, so it is closed
            self._abandon(opening)
            raise
        if opening.host != host:  # another host of that name (not what was loaded): not ours
            if opening.conn is not None:
                _close(opening.conn)
            return None
        if opening.error is not None:
            raise opening.error
        return opening

    def _open(self, host: Host, opening: _Opening) -> None:
        """Open ``host`` (in the opening's own thread) and keep the result for whoever takes it."""
        try:
            address = host.spec.address
            if address.is_sandbox:
                _load_sandbox(host, opening)
            else:
                opening.conn = open_connection(host.name, address.text, host.spec.timeouts)
        except Exception as err:  # handed over as it is: whoever takes the host raises it
            opening.error = err
        finally:
            with self._lock:
                opening.done.set()
                late = opening.abandoned
        if late and opening.conn is not None:
            _close(opening.conn)


def sandbox_node_xml(host: Host, state: sandbox.SandboxFile) -> str:
    """A sandbox host's node XML: its state file's, or a new node of its capacity."""
    return _node_xml(host, state, state.read_bytes())


def _node_xml(host: Host, state: sandbox.SandboxFile, content: bytes | None) -> str:
    """The node XML of ``content`` read from ``state`` (checked), or a new node of the host's capacity."""
    if content is None:
        return sandbox.new_node_xml(host.spec.capacity.cpus, host.spec.capacity.memory)
    return state.text_of(content)


def load_into_test_driver(name: str, node_xml: str) -> libvirt.virConnect:
    """libvirt's test driver loaded with ``node_xml`` (through a temporary file it reads once)."""
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="sandbox-") as loaded:
        loaded.write(node_xml)
        loaded.flush()
        return open_connection(name, f"test://{loaded.name}")


def _load_sandbox(host: Host, opening: _Opening) -> None:
    """A sandbox host's state, read without a lock (as a plan reads it), and the test driver on it."""
    state = sandbox.SandboxFile(host.spec.address.sandbox_path, host.name)
    opening.state = state.read_bytes()
    opening.node_xml = _node_xml(host, state, opening.state)
    opening.conn = load_into_test_driver(host.name, opening.node_xml)


def _close(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
