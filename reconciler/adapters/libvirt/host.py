"""The Hypervisor protocol on libvirt (helped by the package's ``connections``, ``errors``,
``environment`` and ``hostlock``).

:func:`connect` opens a host from its manifest (any libvirt URI, or ``sandbox:PATH`` on libvirt's
test driver) and yields a :class:`LibvirtHypervisor` implementing the core's Hypervisor protocol.
libvirt errors never escape: they are wrapped in ``TemporaryHostError`` or ``PermanentHostError``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import libvirt
from lxml import etree

from reconciler.adapters import sandbox
from reconciler.adapters.libvirt import hostlock
from reconciler.adapters.libvirt.connections import SpareConnections, open_connection
from reconciler.adapters.libvirt.early import EarlyOpens, load_into_test_driver, sandbox_node_xml
from reconciler.adapters.libvirt.environment import read_environment
from reconciler.adapters.libvirt.errors import wrap as _wrap
from reconciler.adapters.libvirt.facts import local_swap
from reconciler.adapters.libvirt.seeds import SeedActions, with_file_passwords
from reconciler.adapters.libvirt.states import lifecycle, running_definition_of
from reconciler.adapters.libvirt.storage import ensure_pool, observe_pools, replay_pool_flags, sandbox_pools
from reconciler.adapters.libvirt.volumes import VolumeActions
from reconciler.engine.hypervisor import DomainObservation, HostEnvironment, HostObservation, StopOutcome
from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.ownership import OWNER_NS, OWNER_PREFIX, owner_metadata
from reconciler.libvirtxml.secrets import keep_secrets, leading_name
from reconciler.spec.hosturi import HostURI
from reconciler.spec.models import Host, Owner, Timeouts
from reconciler.spec.sizes import KIB, parse_libvirt_size

T = TypeVar("T")

_XML_READERS = 8  # at most this many reader connections read domain XML while observing a host
_SPARE_CONNECTIONS = 7  # beside the main one: actions in flight at once on a host (apply's workers: 8)
#: Observed XML leaves out secure values (graphics passwords): it reaches plans, snapshots, manifests.
_XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE
#: With them: for a redefine to keep them, for backups, for the sandbox's own state file.
_SECURE_XML_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
#: Fallback for drivers without checkpoints or NVRAM (the test driver, older daemons).
_UNDEFINE_FLAGS_BASIC = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


def _on_one_connection(method: Callable[..., T]) -> Callable[..., T]:
    """Run an action on one connection held for its whole length (see ``_borrowed``)."""

    @functools.wraps(method)
    def run(self: LibvirtHypervisor, *args: Any, **kwargs: Any) -> T:
        with self._borrowed():
            return method(self, *args, **kwargs)

    return run


class LibvirtHypervisor(VolumeActions, SeedActions):
    """A libvirt connection speaking the Hypervisor protocol (its volume methods: ``volumes``, its
    seed methods: ``seeds``)."""

    def __init__(
        self,
        name: str,
        conn: libvirt.virConnect,
        *,
        local: bool = False,
        in_process: bool = False,
        address: HostURI | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.name = name
        self.conn = conn
        self.local = local  # the hypervisor is this machine: its swap can be read from /proc
        self._in_process = in_process  # an in-process driver: concurrent reads gain nothing
        self._address = address  # None: locked by whoever opened it (a sandbox's state file)
        self._timeouts = timeouts  # None: the defaults, made only when a connection is opened
        self._locked = False  # whether this connection holds the host's apply lock now
        # One call in flight on a connection to a libvirt daemon: when keepalive declares a silent
        # peer dead, libvirt 9.0's client fails only one of the calls waiting on the connection and
        # leaves the others waiting forever (seen on these machines). An in-process driver answers
        # as a function call, so it needs no such care.
        self._wire = threading.Lock()  # held around each call on ``conn`` (not for in_process)
        # Actions run side by side each hold a connection of their own for their whole length: the
        # main one when it is free, else a spare (``_borrowed``).
        self._held = threading.local()
        self._spares = SpareConnections(self._open_spare, _SPARE_CONNECTIONS)
        # The test driver takes LIVE or CONFIG, never both at once.
        self._is_test_driver = self._call("driver type", conn.getType) == "TEST"
        self.changed = False  # whether any method below changed the host
        self.instances: sandbox.InstanceIds | None = None  # a sandbox's instance ids, kept in its file

    @contextmanager
    def exclusive(self, wait: bool = True) -> Iterator[None]:
        """Hold the host's apply lock (``hostlock``: a lock file here, a lease on a remote host),
        waiting for another run's up to the wait limit, or not at all (``LockBusyError``). Held
        already through this connection (``connect(write=True)``), it is not taken twice."""
        if self._address is None or self._locked:
            yield
            return
        with hostlock.host_lock(self.conn, self._address, self.name, wire=self._main_wire(), wait=wait):
            self._locked = True
            try:
                yield
            finally:
                self._locked = False

    def _main_wire(self) -> contextlib.AbstractContextManager[object]:
        """What a call on the main connection holds: its lock, unless the driver is in-process."""
        return contextlib.nullcontext() if self._in_process else self._wire

    def _raw(self, func: Callable[..., T], *args: Any) -> T:
        """One libvirt call, never overlapping another on its connection (see ``_wire``): on the
        connection this thread holds for an action, or on the main one under its lock."""
        if getattr(self._held, "conn", None) is not None:
            return func(*args)
        with self._main_wire():
            return func(*args)

    def _conn(self) -> libvirt.virConnect:
        """The connection this thread's calls go to: the one it holds for an action, else the main one."""
        held: libvirt.virConnect | None = getattr(self._held, "conn", None)
        return held if held is not None else self.conn

    @contextmanager
    def _borrowed(self) -> Iterator[None]:
        """Hold one connection for this thread's calls: the main one when no other call uses it,
        else a spare. An in-process driver, or a thread holding one already, needs nothing more."""
        if self._in_process or getattr(self._held, "conn", None) is not None:
            yield
            return
        # While a lease is held, its renewals need the main connection: actions take spares then.
        leased = self._locked and not (self._address is not None and self._address.is_local)
        main = not leased and self._wire.acquire(blocking=False)
        conn = self.conn if main else self._spares.take()
        self._held.conn = conn
        try:
            yield
        finally:
            self._held.conn = None
            if main:
                self._wire.release()
            else:
                self._spares.give(conn)

    def _open_spare(self) -> libvirt.virConnect:
        """A new connection to this host, within its timeouts."""
        assert self._address is not None  # only a connected host (not in-process) has spares
        return open_connection(self.name, self._address.text, self._timeouts)

    def close(self) -> None:
        """Close the spare connections (the main one is its opener's to close)."""
        self._spares.close()

    def _call(self, what: str, func: Callable[..., T], *args: Any) -> T:
        try:
            return self._raw(func, *args)
        except libvirt.libvirtError as err:
            raise _wrap(self.name, what, err) from err

    def _lookup(self, name: str) -> libvirt.virDomain:
        return self._call(f"domain {name!r}", self._conn().lookupByName, name)

    def observe(self) -> HostObservation:
        """Capacity and every domain: a few host-wide calls plus one XML read per domain.

        The XML reads are round trips to libvirtd. A connection carries one call at a time (see
        ``_wire``), so for many domains the reads go over reader connections opened for the
        purpose, side by side, each with its own share of the domains: at 20 ms of round trip, 200
        domains are read in about an eighth of the time of one read after another. An in-process
        driver (the sandbox, ``test:///``) answers as a plain function call: read in turn.
        """
        stats = self._call(
            "domain stats",
            self.conn.getAllDomainStats,
            libvirt.VIR_DOMAIN_STATS_STATE,  # not BALLOON: that asks every running QEMU (~5 ms each)
            0,
        )
        doms = [dom for dom, _ in stats]
        # A reader connection costs a handshake (an SSH login over qemu+ssh): one per 16 domains.
        readers = 0 if self._in_process or self._address is None else min(_XML_READERS, len(doms) // 16)
        # A pool starts no thread until it is given work: the sequential case costs nothing.
        with ThreadPoolExecutor(1, thread_name_prefix="vr-observe") as pool:
            pending = pool.submit(self._read_on_readers, doms, readers) if readers > 1 else None
            info = self._call("node info", self.conn.getInfo)
            memory = info[1] * 1024 * 1024
            # The kernel's total, not node info's NUMA cell sum; drivers without memory stats (the
            # test driver) only have node info.
            with contextlib.suppress(libvirt.libvirtError, KeyError):
                stats_all = self._raw(self.conn.getMemoryStats, libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
                memory = int(stats_all["total"]) * KIB
            autostart = {
                d.name()
                for d in self._call(
                    "list domains", self.conn.listAllDomains, libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART
                )
            }
            swap = local_swap() if self.local else None
            ksm_saved = self._ksm_saved()
            remote = None if self._in_process or self._address is None else (self._address, self._timeouts)
            pools = observe_pools(self, remote, simulated=self._is_test_driver, local=self.local)
            xmls = pending.result() if pending is not None else [self._read_xml(dom) for dom in doms]
        domains = [
            self._observation(dom, name, xml, lifecycle(values), name in autostart)
            for (dom, values), name, xml in zip(stats, [dom.name() for dom in doms], xmls, strict=True)
            if xml is not None
        ]
        return HostObservation(
            int(info[2]), memory, tuple(domains), swap=swap, ksm_saved=ksm_saved, pools=pools
        )

    def _observation(
        self, dom: libvirt.virDomain, name: str, xml: str, states: tuple[bool, str, str], autostart: bool
    ) -> DomainObservation:
        """One observed domain; its instance id is kept in the domain object (no round trip), or in
        the sandbox's state file, whose ids outlive the test driver's reloads."""
        active, state, reason = states
        instance = dom.ID() if self.instances is None else self.instances.of(name, active)
        running = self._running_definition(dom, name, xml) if active else None
        return DomainObservation(name, xml, active, autostart, state, reason, instance, running)

    def _running_definition(self, dom: libvirt.virDomain, name: str, xml: str) -> str | None:
        """What a running domain runs, when its persistent XML carries a restart mark (``states``);
        a sandbox keeps it in its file while the domain runs, as the test driver's reload forgets."""
        kept = self.instances.definition(name) if self.instances is not None else None
        return running_definition_of(xml, lambda: self._read_xml(dom, 0), kept)

    def _read_on_readers(self, doms: list[libvirt.virDomain], readers: int) -> list[str | None]:
        """Every domain's XML, in the order of ``doms``, read over ``readers`` new connections side
        by side (each finds its own domain objects with one list call, then reads its share)."""
        assert self._address is not None
        uuids = [dom.UUIDString() for dom in doms]
        shares = [uuids[index::readers] for index in range(readers)]

        def read(share: list[str]) -> dict[str, str | None]:
            conn = open_connection(self.name, self._address.text if self._address else "", self._timeouts)
            try:
                reader = LibvirtHypervisor(self.name, conn, address=self._address, timeouts=self._timeouts)
                mine = {dom.UUIDString(): dom for dom in reader._call("list domains", conn.listAllDomains, 0)}
                return {uuid: reader._read_xml(mine[uuid]) if uuid in mine else None for uuid in share}
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()

        with ThreadPoolExecutor(readers, thread_name_prefix="vr-reader") as pool:
            found: dict[str, str | None] = {}
            for part in pool.map(read, shares):
                found.update(part)
        return [found[uuid] for uuid in uuids]

    def _read_xml(self, dom: libvirt.virDomain, flags: int = _XML_FLAGS) -> str | None:
        try:
            return str(self._raw(dom.XMLDesc, flags))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # undefined between the list and the read: it is gone
            raise _wrap(self.name, f"XML of {dom.name()!r}", err) from err

    def _ksm_saved(self) -> int:
        """Memory KSM saves now: ``shm_pages_sharing`` pages of the host's base page size; 0 without KSM."""
        try:
            sharing = int(self._raw(self.conn.getMemoryParameters, 0).get("shm_pages_sharing", 0))
        except libvirt.libvirtError:
            return 0  # the driver has no memory parameters (test driver) or the host no KSM
        if sharing <= 0:
            return 0
        return sharing * self._page_size()

    def _page_size(self) -> int:
        """The host's base page size from its capabilities (the smallest page listed), else 4 KiB."""
        try:
            caps = etree.fromstring(self._raw(self.conn.getCapabilities).encode())
        except (libvirt.libvirtError, etree.XMLSyntaxError):
            return 4 * KIB
        sizes = [
            parse_libvirt_size(page.get("size"), page.get("unit")) for page in caps.iterfind("host/cpu/pages")
        ]
        return min(sizes) if sizes else 4 * KIB

    @_on_one_connection
    def define(self, xml: str) -> None:
        """Define or redefine a persistent domain with the graphics password of its passwordFile
        (``seeds``); a redefine keeps the current secure values (passwords) the new XML does not
        set, which the observed XML it was made from leaves out."""
        xml = with_file_passwords(self.name, xml)
        name = leading_name(xml)
        current = self.secure_xml(name) if name is not None else None
        if current is not None:
            with contextlib.suppress(DomainXMLError):  # not domain XML: libvirt refuses it and says why
                xml = keep_secrets(xml, current)
        self.changed = True
        self._call("define", self._conn().defineXML, xml)

    def secure_xml(self, name: str) -> str | None:
        """A domain's persistent XML with its secure values (backups, redefines); None when gone."""
        try:
            return str(self._raw(self._raw(self._conn().lookupByName, name).XMLDesc, _SECURE_XML_FLAGS))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # a new domain, or one undefined meanwhile
            raise _wrap(self.name, f"XML of {name!r}", err) from err

    @_on_one_connection
    def undefine(self, name: str, *, keep_nvram: bool = False) -> None:
        """Undefine with managed save, snapshot/checkpoint metadata and NVRAM (kept when asked), as
        the driver allows."""
        dom = self._lookup(name)
        self.changed = True
        flags = _UNDEFINE_FLAGS
        if keep_nvram:
            flags = (flags & ~libvirt.VIR_DOMAIN_UNDEFINE_NVRAM) | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
        try:
            self._raw(dom.undefineFlags, flags)
        except libvirt.libvirtError as err:
            if err.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
                raise _wrap(self.name, f"undefine {name!r}", err) from err
            self._call(f"undefine {name!r}", dom.undefineFlags, _UNDEFINE_FLAGS_BASIC)

    @_on_one_connection
    def start(self, name: str) -> None:
        """Start a defined domain."""
        self.changed = True
        self._call(f"start {name!r}", self._lookup(name).create)
        if self.instances is not None:
            self.instances.started(name)

    @_on_one_connection
    def stop(self, name: str, timeout: float) -> StopOutcome:
        """Graceful shutdown (ACPI), polled until shut off; forced off after ``timeout`` seconds."""
        dom = self._lookup(name)
        if not self._call(f"state of {name!r}", dom.isActive):
            return StopOutcome.ALREADY
        self.changed = True
        self._call(f"shutdown {name!r}", dom.shutdown)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if not self._call(f"state of {name!r}", dom.isActive):
                return StopOutcome.SHUTDOWN
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        try:
            self._raw(dom.destroy)
        except libvirt.libvirtError as err:
            invalid = err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
            if invalid and not self._call(f"state of {name!r}", dom.isActive):
                return StopOutcome.SHUTDOWN  # it went down on its own just now
            raise _wrap(self.name, f"force off {name!r}", err) from err
        return StopOutcome.DESTROYED

    @_on_one_connection
    def set_current_memory(self, name: str, config: int, live: int | None) -> None:
        """Balloon: persistent target always, live target when given; never a redefine."""
        dom = self._lookup(name)
        what = f"balloon {name!r}"
        self.changed = True
        if live is not None:
            # A running guest cannot balloon above the memory it was started with (a raise of
            # <memory> waits for its restart): ask for its live maximum only when ballooning it.
            live = min(live, int(self._call(what, dom.maxMemory)) * KIB)
        if live is not None and live == config and not self._is_test_driver:
            flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
            self._call(what, dom.setMemoryFlags, config // KIB, flags)
            return
        # The test driver takes LIVE or CONFIG, never both; different targets need two calls anyway.
        if live is not None:
            self._call(what, dom.setMemoryFlags, live // KIB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        self._call(what, dom.setMemoryFlags, config // KIB, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    @_on_one_connection
    def set_autostart(self, name: str, autostart: bool) -> None:
        """Start the domain with the host, or not."""
        self.changed = True
        self._call(f"autostart {name!r}", self._lookup(name).setAutostart, int(autostart))

    @_on_one_connection
    def set_owner(self, name: str, owner: Owner) -> None:
        """Mark a domain managed: our metadata element in its persistent config, nothing redefined."""
        dom = self._lookup(name)
        self.changed = True
        self._call(
            f"mark {name!r} managed",
            dom.setMetadata,
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            owner_metadata(owner),
            OWNER_PREFIX,
            OWNER_NS,
            libvirt.VIR_DOMAIN_AFFECT_CONFIG,
        )

    @_on_one_connection
    def ensure_pool(self, name: str, xml: str | None, autostart: bool | None) -> str:
        """A ``pool`` action: defined, built only when it cannot start as it is, started, autostarted."""
        return ensure_pool(self, name, xml, autostart, simulated=self._is_test_driver)

    def environment(
        self, paths: Collection[str], *, secrets: Collection[str] = (), folders: Collection[str] = ()
    ) -> HostEnvironment:
        """Networks, bridges, files, password files and pool folders, for the pre-flight (``environment``)."""
        read = functools.partial(read_environment, local=self.local, simulated=self._is_test_driver)
        return self._call("environment", lambda: read(self.conn, paths, secrets=secrets, folders=folders))

    def sandbox_domains(self) -> list[sandbox.SandboxDomain]:
        """Every domain's persistent XML and run state, to write a sandbox state file."""
        autostart = {d.name() for d in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)}
        return [
            sandbox.SandboxDomain(
                xml=(xml := dom.XMLDesc(_SECURE_XML_FLAGS)),
                active=(active := bool(dom.isActive())),
                autostart=dom.name() in autostart,
                instance=-1 if self.instances is None else self.instances.of(dom.name(), active),
                definition=self._running_definition(dom, dom.name(), xml) if active else None,
            )
            for dom in sorted(self.conn.listAllDomains(0), key=lambda d: d.name())
        ]


@contextmanager
def connect(host: Host, *, write: bool) -> Iterator[LibvirtHypervisor]:
    """Open ``host``; when writing, hold its lock for the whole block (see ``hostlock``): observe,
    check and apply then see no other apply in between."""
    with (
        open_host(host, write=write) as hypervisor,
        hypervisor.exclusive() if write else contextlib.nullcontext(),
    ):
        yield hypervisor


@contextmanager
def open_host(host: Host, *, write: bool, early: EarlyOpens | None = None) -> Iterator[LibvirtHypervisor]:
    """Open ``host`` without taking its apply lock (the caller takes it: ``exclusive()``), except a
    sandbox, whose state file is read under its lock when writing and saved on the way out; with
    the connection ``early`` opened for it while the manifests loaded, if any.

    The sandbox is saved even when apply stops half-way, exactly like a real host keeps the
    actions that completed before a crash; the next run re-plans from there. Reading (plan,
    snapshot) takes no lock and writes nothing.
    """
    uri = host.spec.address
    if not uri.is_sandbox:
        conn = (early.take(host) if early else None) or open_connection(
            host.name, uri.text, host.spec.timeouts
        )
        hypervisor: LibvirtHypervisor | None = None
        try:
            hypervisor = LibvirtHypervisor(
                host.name,
                conn,
                local=uri.is_local,
                in_process=uri.in_process,
                address=uri,
                timeouts=host.spec.timeouts,
            )
            yield hypervisor
        finally:
            if hypervisor is not None:
                hypervisor.close()
            conn.close()
        return
    with sandbox.locked(uri.sandbox_path, write=write, host=host.name) as state:
        if early is not None:
            taken, node_xml = early.take_sandbox(host, state)
        else:
            taken, node_xml = None, sandbox_node_xml(host, state)
        conn = taken or load_into_test_driver(host.name, node_xml)
        try:
            hypervisor = LibvirtHypervisor(host.name, conn, in_process=True)
            autostart, hypervisor.instances = sandbox.node_marks(node_xml)
            for name in autostart:
                hypervisor.set_autostart(name, True)
            replay_pool_flags(conn, *sandbox.pool_marks(node_xml))
            hypervisor.changed = False  # replaying the file's own autostart flags changes nothing
            try:
                yield hypervisor
            finally:
                if write and hypervisor.changed:
                    domains, kept = hypervisor.sandbox_domains(), sandbox_pools(conn)
                    state.write(
                        sandbox.compose_node_xml(node_xml, domains, hypervisor.instances.next_id, kept)
                    )
        finally:
            conn.close()
