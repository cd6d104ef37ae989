"""Part of the libvirt adapter: a host's environment for the pre-flight checks (its networks,
bridges and domain files), and the defined domains' XML for ``doctor``. It sits beside
``host``, which calls it, to keep that module short.

Read through libvirt, so it works the same on a remote host, plus this machine's own files when
the hypervisor is this machine:

- **networks**: every libvirt network with its active and autostart flags (works remotely);
- **bridges**: every host interface libvirt's interface API lists, with its type; on this machine
  ``/sys/class/net`` stands in when that API does not answer (no interface driver running);
- **files**: on this machine, ``stat`` of the path itself and whether the QEMU user could open it
  (:mod:`reconciler.ops.qemu_access`); on any other host, a storage-volume lookup by path when an
  active storage pool holds the file's folder (the pool is refreshed once when the file is not
  found, since files copied in by hand appear only then), else "not checked";
- **graphics password files**: read on this machine whatever the host, as the definition will read
  them (``seeds.read_password``): the password's length, or why the file cannot be used;
- **pool folders**, on this machine only: the filesystem of the nearest folder that exists, as
  libvirt counts a dir pool on it (``statvfs``; its device number tells pools that share it).

A simulated host (libvirt's test driver, which includes every sandbox) starts with no network and
no interface, and accepts any name in a domain: there, networks and bridges are checked only when
its node file declares some. Failures of these look-ups leave the item unchecked, with the reason,
rather than failing the plan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

import libvirt
from lxml import etree

from reconciler.adapters.libvirt.seeds import read_password
from reconciler.engine.hypervisor import HostEnvironment, NetworkFact, PathFact, SecretFact, SpaceFact
from reconciler.errors import PermanentHostError
from reconciler.ops.qemu_access import (
    NOT_CONSIDERED,
    QemuIdentity,
    local_path_fact,
    qemu_conf_user,
    qemu_identity,
    session_identity,
)

SYS_CLASS_NET = Path("/sys/class/net")
_SIMULATED = "this simulated host (libvirt's test driver, a sandbox) declares none"


def _message(err: libvirt.libvirtError) -> str:
    return str(err.get_error_message() or err)


def read_environment(
    conn: libvirt.virConnect,
    paths: Collection[str],
    *,
    local: bool,
    simulated: bool,
    secrets: Collection[str] = (),
    folders: Collection[str] = (),
) -> HostEnvironment:
    """The environment of the host behind ``conn`` (``local``: the hypervisor is this machine;
    ``simulated``: libvirt's test driver, whose pools have made-up figures: no folder is measured)."""
    notes: list[str] = []
    networks, note = _networks(conn, simulated=simulated)
    notes += [note] if note else []
    bridges, note = _bridges(conn, simulated=simulated, local=local)
    notes += [note] if note else []
    if local and paths:
        who, note = _qemu_identity(conn)
        notes += [note] if note else []
        facts = {path: local_path_fact(path, who) for path in paths}
    else:
        facts = _pool_paths(conn, paths)
    measured = {folder: space for folder in folders if (space := folder_space(folder))} if local else {}
    return HostEnvironment(
        networks=networks,
        bridges=bridges,
        paths=facts,
        unchecked=tuple(notes),
        secrets={path: secret_fact(path) for path in secrets},
        space={} if simulated else measured,
    )


def secret_fact(path: str) -> SecretFact:
    """A graphics password file read as a definition reads it: its password's length, or why not."""
    try:
        return SecretFact(length=len(read_password("this machine", path, "spice")))  # the longest kind
    except PermanentHostError as err:
        return SecretFact(problem=str(err).split(f"passwordFile {path}: ", 1)[-1])


def filesystem_id(path: str) -> str:
    """The filesystem holding ``path`` on this machine, by device number ("" when it is not there)."""
    try:
        return f"dev {os.stat(path).st_dev}"
    except OSError:
        return ""


def folder_space(folder: str) -> SpaceFact | None:
    """The filesystem a folder is (or will be made) on: its nearest folder that exists, with its
    figures as libvirt gives a dir pool's (capacity, and free blocks as available); None when
    nothing on the way can be read."""
    here = os.path.normpath(folder)
    while True:
        try:
            figures = os.statvfs(here)
        except OSError:
            if here == os.path.dirname(here):
                return None
            here = os.path.dirname(here)
            continue
        return SpaceFact(
            figures.f_frsize * figures.f_blocks, figures.f_frsize * figures.f_bfree, filesystem_id(here)
        )


def _networks(conn: libvirt.virConnect, *, simulated: bool) -> tuple[dict[str, NetworkFact] | None, str]:
    try:  # three listings, whatever the number of networks (a name is read without a call)
        active = {net.name() for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE)}
        autostart = {net.name() for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_AUTOSTART)}
        found = {
            net.name(): NetworkFact(active=net.name() in active, autostart=net.name() in autostart)
            for net in conn.listAllNetworks(0)
        }
    except libvirt.libvirtError as err:
        return None, f"networks: not checked: {_message(err)}"
    if simulated and not found:
        return None, f"networks: not checked: {_SIMULATED}"
    return found, ""


def _bridges(conn: libvirt.virConnect, *, simulated: bool, local: bool) -> tuple[dict[str, str] | None, str]:
    try:
        found = {
            iface.name(): str(etree.fromstring(iface.XMLDesc(0).encode()).get("type", ""))
            for iface in conn.listAllInterfaces(0)
        }
    except libvirt.libvirtError as err:
        if local:
            return local_interfaces(), ""
        return None, f"bridges: not checked: libvirt's interface API does not answer ({_message(err)})"
    if simulated and not found:
        return None, f"bridges: not checked: {_SIMULATED}"
    return found, ""


def local_interfaces(root: Path = SYS_CLASS_NET) -> dict[str, str]:
    """This machine's network interfaces from sysfs: a bridge has a ``bridge`` folder."""
    if not root.is_dir():
        return {}
    return {entry.name: "bridge" if (entry / "bridge").is_dir() else "ethernet" for entry in root.iterdir()}


def _qemu_identity(conn: libvirt.virConnect) -> tuple[QemuIdentity | None, str]:
    """Who QEMU runs as on this machine: the caller for a session daemon, else qemu.conf's user."""
    with contextlib.suppress(libvirt.libvirtError):
        if conn.getURI().rstrip("/").endswith("/session"):
            return (
                session_identity(),
                f"files: QEMU's access computed from modes and owners; {NOT_CONSIDERED}",
            )
    who = qemu_identity()
    if who is None:
        return None, f"files: QEMU's access not checked: its user {qemu_conf_user()!r} does not exist here"
    return who, f"files: QEMU's access computed for {who.user} from modes and owners; {NOT_CONSIDERED}"


def _pool_paths(conn: libvirt.virConnect, paths: Collection[str]) -> dict[str, PathFact]:
    """Files of a host that is not this machine, looked up as storage volumes of their folder's pool."""
    if not paths:
        return {}
    try:
        pools = {}
        for pool in conn.listAllStoragePools(0):
            target = etree.fromstring(pool.XMLDesc(0).encode()).findtext("target/path")
            if target:
                pools[os.path.normpath(target)] = pool
    except libvirt.libvirtError as err:
        fact = PathFact(None, note=f"not checked: storage pools do not answer ({_message(err)})")
        return dict.fromkeys(paths, fact)
    refreshed: set[str] = set()
    return {path: _volume(pools, refreshed, path) for path in paths}


def _volume(pools: dict[str, libvirt.virStoragePool], refreshed: set[str], path: str) -> PathFact:
    folder = os.path.dirname(os.path.normpath(path))
    pool = pools.get(folder)
    if pool is None:
        return PathFact(
            None, note=f"not checked: the host is not this machine, and no storage pool holds {folder}"
        )
    name = os.path.basename(path)
    try:
        if not pool.isActive():
            return PathFact(None, note=f"not checked: storage pool {pool.name()!r} ({folder}) is not active")
        if _has_volume(pool, name):
            return PathFact(exists=True)
        if folder in refreshed:
            return PathFact(exists=False)
        refreshed.add(folder)
        pool.refresh(0)  # files copied in by hand appear in the pool only after a refresh
        return PathFact(exists=_has_volume(pool, name))
    except libvirt.libvirtError as err:
        return PathFact(None, note=f"not checked: storage pool {pool.name()!r} ({folder}): {_message(err)}")


def _has_volume(pool: libvirt.virStoragePool, name: str) -> bool:
    try:
        pool.storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return False
        raise
    return True


def domain_xmls(conn: libvirt.virConnect) -> tuple[tuple[str, str], ...]:
    """Every defined domain's name and persistent XML, for ``doctor`` (one undefined meanwhile is skipped)."""
    found = []
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            found.append((dom.name(), str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))))
    return tuple(found)
