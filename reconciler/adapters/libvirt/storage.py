"""Part of the libvirt adapter: storage pools observed with their volumes, a ``pool`` action
carried out, and pools kept in a sandbox's state file. It sits beside ``host``, which calls it.

Observing costs one listing of the pools (plus one of the autostart ones), then per pool one info
and one XML read, a refresh when it is an active dir pool, and one volume listing; per volume one
XML read, which holds its sizes, format and backing file at once. A dir pool is refreshed before
it is read because files copied into its folder by hand (a base image, a disk made with
``qemu-img``) appear in libvirt only after a refresh, and a plan that missed them would count a
pool emptier than it is; a refresh reads each file's header, some tens of microseconds a file, and
a refresh that fails (another client building a volume in the pool) leaves the pool as libvirt
last saw it. On a remote host with many volumes, the XML reads go over reader connections side by
side, as the domains' do (on this machine a reader's handshake costs more than it saves: 201
volumes took 26 ms in turn, 41 ms over readers, refresh included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import libvirt

from reconciler.adapters.libvirt.connections import open_connection
from reconciler.adapters.libvirt.environment import filesystem_id
from reconciler.adapters.libvirt.errors import is_temporary
from reconciler.adapters.libvirt.errors import wrap as _wrap
from reconciler.adapters.sandbox import SandboxPool
from reconciler.engine.hypervisor import PoolObservation, VolumeObservation
from reconciler.errors import DomainXMLError, PermanentHostError
from reconciler.libvirtxml.pools import read_pool_xml, read_volume_xml
from reconciler.spec.hosturi import HostURI
from reconciler.spec.models import Timeouts

T = TypeVar("T")

_RUNNING = (libvirt.VIR_STORAGE_POOL_RUNNING, libvirt.VIR_STORAGE_POOL_DEGRADED)
_REFRESHED_TYPES = ("dir", "fs", "netfs")  # pools whose volumes are files others may copy in
_VOLUMES_PER_READER = 32  # a reader connection costs a handshake: one per this many volumes
_READERS = 8


class StorageHost(Protocol):
    """What this module needs of ``host.LibvirtHypervisor``: its calls, kept one at a time per
    connection, and the way to open reader connections."""

    name: str
    conn: libvirt.virConnect
    changed: bool

    def _call(self, what: str, func: Callable[..., T], *args: Any) -> T: ...

    def _raw(self, func: Callable[..., T], *args: Any) -> T: ...

    def _conn(self) -> libvirt.virConnect: ...


#: How to open reader connections to a remote host (its address and timeouts); None: read in turn.
Readers = tuple[HostURI, Timeouts | None] | None


# ------------------------------------------------------------------------------------- observe


def observe_pools(
    host: StorageHost, readers: Readers, *, simulated: bool, local: bool = False
) -> tuple[PoolObservation, ...]:
    """Every storage pool of the host with its volumes; none when the host has no storage driver.
    ``simulated``: libvirt's test driver, whose pools have no separate persistent XML (nor real
    figures); ``local``: the host is this machine, where a running dir pool's filesystem is known
    (pools on one filesystem share its space)."""
    try:
        pools = host._call("list storage pools", host.conn.listAllStoragePools, 0)
    except PermanentHostError:
        return ()  # a daemon without the storage driver: no pools to see
    autostart = {
        pool.name()
        for pool in host._call(
            "list storage pools",
            host.conn.listAllStoragePools,
            libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_AUTOSTART,
        )
    }
    read = (_pool_figures(host, pool, pool.name() in autostart, simulated) for pool in pools)
    found = [seen for seen in read if seen is not None]
    volumes = _volume_xmls(host, found, readers)
    measured = local and not simulated
    return tuple(
        PoolObservation(
            name=seen.name,
            type=seen.type,
            target=seen.target,
            active=seen.active,
            autostart=seen.autostart,
            capacity=seen.capacity,
            allocation=seen.allocation,
            available=seen.available,
            volumes=tuple(_volumes(volumes.get(seen.name, ()))),
            xml=seen.xml,
            filesystem=filesystem_id(seen.target) if measured and seen.type in _REFRESHED_TYPES else "",
        )
        for seen, _pool in sorted(found, key=lambda item: item[0].name)
    )


@dataclass(frozen=True)
class _Figures:
    """One pool before its volumes are read."""

    name: str
    type: str
    target: str
    active: bool
    autostart: bool
    capacity: int
    allocation: int
    available: int
    xml: str
    volumes: tuple[libvirt.virStorageVol, ...]  # as listed, on the main connection


def _pool_figures(
    host: StorageHost, pool: libvirt.virStoragePool, autostart: bool, simulated: bool
) -> tuple[_Figures, libvirt.virStoragePool] | None:
    """A pool's definition and figures (refreshed first when it is an active dir pool), and its
    volume names; None when it was undefined since the listing."""
    name = pool.name()
    try:
        xml = str(host._raw(pool.XMLDesc, 0 if simulated else libvirt.VIR_STORAGE_XML_INACTIVE))
        facts = read_pool_xml(xml)
        state = host._raw(pool.info)
        active = state[0] in _RUNNING
        if active and facts.type in _REFRESHED_TYPES and _refreshed(host, pool):
            state = host._raw(pool.info)
        listed = tuple(host._raw(pool.listAllVolumes, 0)) if active else ()
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise _wrap(host.name, f"storage pool {name!r}", err) from err
    except DomainXMLError as err:
        raise PermanentHostError(host.name, f"storage pool {name!r}: {err}") from err
    capacity, allocation, available = (int(value) for value in state[1:4])
    figures = _Figures(
        name, facts.type, facts.target, active, autostart, capacity, allocation, available, xml, listed
    )
    return figures, pool


def _refreshed(host: StorageHost, pool: libvirt.virStoragePool) -> bool:
    """Refresh a pool; False (it stays as libvirt last saw it) when libvirt refuses now, e.g. while
    another client builds a volume in it."""
    try:
        host._raw(pool.refresh, 0)
    except libvirt.libvirtError as err:
        if is_temporary(err):
            raise
        return False
    return True


def _volumes(xmls: Iterable[str | None]) -> Iterator[VolumeObservation]:
    """Each readable volume XML as an observation (one gone since the listing is left out)."""
    for xml in xmls:
        if xml is None:
            continue
        try:
            facts = read_volume_xml(xml)
        except DomainXMLError:
            continue
        yield VolumeObservation(
            name=facts.name,
            path=facts.path,
            capacity=facts.capacity,
            allocation=facts.allocation,
            format=facts.format,
            backing=facts.backing,
        )


def _volume_xmls(
    host: StorageHost, pools: list[tuple[_Figures, libvirt.virStoragePool]], address: Readers
) -> dict[str, list[str | None]]:
    """Every volume's XML by pool: in turn, or over reader connections for many on a remote host."""
    listed = {(seen.name, volume.name()): volume for seen, _ in pools for volume in seen.volumes}
    wanted = list(listed)
    remote = address is not None and not address[0].is_local  # locally a handshake costs more than it saves
    readers = min(_READERS, len(wanted) // _VOLUMES_PER_READER) if remote else 0
    if readers > 1 and address is not None:
        read = _read_on_readers(host.name, address, wanted, readers)
    else:
        read = {key: _read_volume(host._raw, host.name, volume) for key, volume in listed.items()}
    found: dict[str, list[str | None]] = {}
    for key in wanted:
        found.setdefault(key[0], []).append(read.get(key))
    return found


def _read_volume(raw: Callable[..., Any], host: str, volume: libvirt.virStorageVol) -> str | None:
    """One volume's XML (the call through ``raw``); None when it went away since the listing."""
    try:
        return str(raw(volume.XMLDesc, 0))
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise _wrap(host, f"volume {volume.name()!r}", err) from err


def _read_on_readers(
    host: str, address: tuple[HostURI, Timeouts | None], wanted: list[tuple[str, str]], readers: int
) -> dict[tuple[str, str], str | None]:
    """The volumes' XML over ``readers`` new connections side by side, each with its share."""
    uri, timeouts = address

    def read(share: list[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        conn = open_connection(host, uri.text, timeouts)
        try:
            volumes: dict[tuple[str, str], libvirt.virStorageVol] = {}
            for pool_name in dict.fromkeys(pool_name for pool_name, _ in share):
                try:  # one listing per pool finds this reader's volume objects
                    listing = conn.storagePoolLookupByName(pool_name).listAllVolumes(0)
                    volumes.update(((pool_name, v.name()), v) for v in listing)
                except libvirt.libvirtError as err:
                    raise _wrap(host, f"storage pool {pool_name!r}", err) from err
            return {
                key: _read_volume(_direct, host, volumes[key]) if key in volumes else None for key in share
            }
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    shares = [wanted[index::readers] for index in range(readers)]
    found: dict[tuple[str, str], str | None] = {}
    with ThreadPoolExecutor(readers, thread_name_prefix="vr-volumes") as pool:
        for part in pool.map(read, shares):
            found.update(part)
    return found


def _direct(func: Callable[..., T], *args: Any) -> T:
    """A call on a reader connection, which no other thread uses."""
    return func(*args)


# ---------------------------------------------------------------------------------------- apply


def ensure_pool(
    host: StorageHost, name: str, xml: str | None, autostart: bool | None, *, simulated: bool
) -> str:
    """Carry out a ``pool`` action: define from ``xml`` (when given), start when inactive (built
    first only when it cannot start as it is), set autostart (None: keep). Returns what was done."""
    conn = host._conn()
    done = []
    host.changed = True
    if xml is not None:
        pool = host._call(f"define storage pool {name!r}", conn.storagePoolDefineXML, xml, 0)
        done.append("defined")
    else:
        pool = host._call(f"storage pool {name!r}", conn.storagePoolLookupByName, name)
    if not host._call(f"state of storage pool {name!r}", pool.isActive):
        done.append("built, started" if _start(host, pool, name, simulated) else "started")
    if autostart is not None:
        host._call(f"autostart of storage pool {name!r}", pool.setAutostart, int(autostart))
        done.append(f"autostart {'on' if autostart else 'off'}")
    return ", ".join(done) or "as wanted already"


def _start(host: StorageHost, pool: libvirt.virStoragePool, name: str, simulated: bool) -> bool:
    """Start a pool; when it cannot start as it is (its folder or volume group is missing), build it
    with ``NO_OVERWRITE`` and start it then. Returns whether it was built.

    ``NO_OVERWRITE`` makes libvirt refuse to build on a device that holds a file system, a partition
    table or an LVM signature: that refusal is reported as an error, and never retried with
    overwrite. The test driver (a sandbox) builds nothing real and takes no flag.
    """
    try:
        host._raw(pool.create, 0)
        return False
    except libvirt.libvirtError as err:
        if _lost_on_the_way(err):
            raise _wrap(host.name, f"start storage pool {name!r}", err) from err
        why = err.get_error_message() or str(err)
    try:
        host._raw(pool.build, _build_flags(host, pool, simulated))
    except libvirt.libvirtError as err:
        if _lost_on_the_way(err):
            raise _wrap(host.name, f"build storage pool {name!r}", err) from err
        raise PermanentHostError(
            host.name,
            f"storage pool {name!r} cannot start ({why}), and building it failed "
            f"({err.get_error_message() or err}): it is only ever built without overwriting, so a "
            "device holding data is never formatted; free or change its devices by hand",
        ) from err
    host._call(f"start storage pool {name!r}", pool.create, 0)
    return True


def _build_flags(host: StorageHost, pool: libvirt.virStoragePool, simulated: bool) -> int:
    """``NO_OVERWRITE`` for a pool built on devices (logical, fs, disk); a dir pool's build only makes
    its folder, and libvirt takes no overwrite flag for it; the test driver takes no flag at all."""
    if simulated:
        return 0
    kind = read_pool_xml(host._call(f"XML of storage pool {pool.name()!r}", pool.XMLDesc, 0)).type
    return 0 if kind == "dir" else libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE


def _lost_on_the_way(err: libvirt.libvirtError) -> bool:
    """Whether a failed start or build is the connection's fault (retry later), not the pool's: a
    system error from the host's side (a missing folder) is about the pool."""
    return is_temporary(err) and err.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)


# -------------------------------------------------------------------------------------- sandbox


def sandbox_pools(conn: libvirt.virConnect) -> list[SandboxPool]:
    """Every pool of a test-driver connection, ready for the state file (the test driver reads a
    pool's volumes from ``<volume>`` elements inside its ``<pool>``)."""
    autostart = {p.name() for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_AUTOSTART)}
    found = []
    for pool in sorted(conn.listAllStoragePools(0), key=lambda p: p.name()):
        active = bool(pool.isActive())
        volumes = [vol.XMLDesc(0) for vol in pool.listAllVolumes(0)] if active else []
        body = str(pool.XMLDesc(0)).rstrip()
        head, _, _tail = body.rpartition("</pool>")
        inner = "".join(_indented(volume) for volume in volumes)
        found.append(SandboxPool(pool.name(), f"{head}{inner}</pool>\n", active, pool.name() in autostart))
    return found


def _indented(xml: str) -> str:
    """A volume's XML indented one level, to sit inside its pool's element."""
    return "".join(f"  {line}\n" for line in xml.rstrip().splitlines())


def replay_pool_flags(conn: libvirt.virConnect, inactive: set[str], autostart: set[str]) -> None:
    """Give the pools of a just-loaded sandbox the flags its state file kept: the test driver starts
    every pool it loads and keeps no autostart flag."""
    for name in sorted(inactive | autostart):
        with _missing_pool_ignored():
            pool = conn.storagePoolLookupByName(name)
            if name in inactive and pool.isActive():
                pool.destroy()
            if name in autostart:
                pool.setAutostart(1)


@contextlib.contextmanager
def _missing_pool_ignored() -> Iterator[None]:
    """A flag kept for a pool the file no longer holds (edited by hand) is dropped."""
    try:
        yield
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
