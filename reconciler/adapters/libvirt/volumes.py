"""Part of the libvirt adapter: a disk's volume created, grown or deleted in its storage pool.

:class:`VolumeActions` gives ``host.LibvirtHypervisor`` the Hypervisor protocol's volume methods;
each holds one connection for its whole length, like every other action, so the volumes of many
domains are made side by side.

- **create**: ``storagePool.createXML`` for an empty image or a qcow2 overlay (its ``<backingStore>``
  is the base image, whose format is read from the pool that holds it), ``createXMLFrom`` for a
  copy (libvirt copies only from a volume, so the base is looked up by its path in the host's pools),
  grown to the asked size when the copy came out smaller. A volume already there is left alone: an
  apply that stopped between making a volume and defining its domain is finished by the next run,
  which finds the volume and defines the domain.
- **resize**: ``virDomain.blockResize`` when the domain runs on the volume (QEMU grows the image
  and the guest sees the new size at once), else ``virStorageVol.resize``; never smaller. QEMU
  cannot grow a block device, so a running domain's volume in an LVM pool is grown by
  ``virStorageVol.resize`` (lvresize) first, then ``blockResize`` to that size tells the guest.
- **delete**: ``virStorageVol.delete``; a volume already gone is no error.

libvirt's test driver (a sandbox) has neither resize: it holds no data, so a volume is grown there
by making it again at the new size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import libvirt
from lxml import etree

from reconciler.adapters.libvirt.errors import wrap as _wrap
from reconciler.engine.actions import VolumeChange
from reconciler.errors import PermanentHostError
from reconciler.libvirtxml.pools import read_pool_xml, read_volume_xml
from reconciler.libvirtxml.volumes import render_volume
from reconciler.spec.sizes import format_size

T = TypeVar("T")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class VolumeHost(Protocol):
    """What this module needs of ``host.LibvirtHypervisor``."""

    name: str
    changed: bool
    _is_test_driver: bool

    def _call(self, what: str, func: Callable[..., T], *args: Any) -> T: ...

    def _raw(self, func: Callable[..., T], *args: Any) -> T: ...

    def _conn(self) -> libvirt.virConnect: ...

    def _borrowed(self) -> AbstractContextManager[None]: ...


class VolumeActions:
    """The Hypervisor protocol's volume methods, for ``LibvirtHypervisor`` to inherit."""

    def create_volume(self: VolumeHost, volume: VolumeChange) -> str:
        """Make a volume in its pool (see the module's docstring); return what was done."""
        with self._borrowed():
            return create_volume(self, volume)

    def resize_volume(self: VolumeHost, domain: str, volume: VolumeChange) -> str:
        """Grow a volume, live through ``domain`` when it runs on it; return what was done."""
        with self._borrowed():
            return resize_volume(self, domain, volume)

    def delete_volume(self: VolumeHost, volume: VolumeChange) -> str:
        """Delete a volume from its pool; return what was done."""
        with self._borrowed():
            return delete_volume(self, volume)


def _pool(host: VolumeHost, name: str) -> libvirt.virStoragePool:
    return host._call(f"storage pool {name!r}", host._conn().storagePoolLookupByName, name)


def _volume(
    host: VolumeHost, pool: libvirt.virStoragePool, volume: VolumeChange
) -> libvirt.virStorageVol | None:
    """The volume in its pool, or None when the pool has no volume of that name."""
    try:
        return host._raw(pool.storageVolLookupByName, volume.name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise _wrap(host.name, f"volume {volume.pool}/{volume.name}", err) from err


def create_volume(host: VolumeHost, volume: VolumeChange) -> str:
    """Make ``volume`` as its action says; one already there is left as it is."""
    pool = _pool(host, volume.pool)
    what = f"create volume {volume.pool}/{volume.name}"
    if _volume(host, pool, volume) is not None:
        return "already there: left as it is"
    logical = read_pool_xml(host._call(what, pool.XMLDesc, 0)).type == "logical"
    allocation = volume.capacity if logical else 0  # a raw LV smaller than its size is a thin snapshot
    base = _base(host, volume) if volume.source else None
    host.changed = True
    if base is not None and volume.mode == "clone":
        xml = render_volume(volume.name, volume.capacity, volume.format, allocation=allocation)
        made = host._call(what, pool.createXMLFrom, xml, base, 0)
        _grow_copy(host, made, volume)
        return f"copied from {volume.source}, {format_size(volume.capacity)}"
    backing = None
    if base is not None:
        backing = (volume.source, read_volume_xml(host._call(what, base.XMLDesc, 0)).format or "raw")
    xml = render_volume(volume.name, volume.capacity, volume.format, allocation=allocation, backing=backing)
    host._call(what, pool.createXML, xml, 0)
    made_as = f"qcow2 overlay on {volume.source}" if backing else f"empty {volume.format}"
    return f"created: {made_as}, {format_size(volume.capacity)}"


def _base(host: VolumeHost, volume: VolumeChange) -> libvirt.virStorageVol:
    """The base image as a volume of one of the host's pools (the plan checked it is one)."""
    try:
        return host._raw(host._conn().storageVolLookupByPath, volume.source)
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise _wrap(host.name, f"base image {volume.source}", err) from err
    raise PermanentHostError(
        host.name,
        f"volume {volume.pool}/{volume.name}: its base image {volume.source} is not a volume of any "
        "storage pool on the host",
    )


def _grow_copy(host: VolumeHost, made: libvirt.virStorageVol, volume: VolumeChange) -> None:
    """Grow a copy that came out at its base's size to the size asked for."""
    capacity = int(host._call(f"volume {volume.pool}/{volume.name}", made.info)[1])
    if capacity < volume.capacity:
        _grow_in_pool(host, made, volume)


def resize_volume(host: VolumeHost, domain: str, volume: VolumeChange) -> str:
    """Grow ``volume`` to its new capacity: live through ``domain`` when it runs on it."""
    pool = _pool(host, volume.pool)
    found = _volume(host, pool, volume)
    if found is None:
        raise PermanentHostError(host.name, f"volume {volume.pool}/{volume.name} is not in its pool")
    what = f"resize volume {volume.pool}/{volume.name}"
    capacity = int(host._call(what, found.info)[1])
    size = format_size(volume.capacity)
    if capacity >= volume.capacity:
        return f"already {format_size(capacity)}: left as it is"
    host.changed = True
    target = _running_disk(host, domain, volume, host._call(what, found.path))
    logical = read_pool_xml(host._call(what, pool.XMLDesc, 0)).type == "logical"
    steps = growth_steps(logical=logical, live=target is not None, test_driver=host._is_test_driver)
    for step in steps:
        if step == "pool":
            _grow_in_pool(host, found, volume)
        else:
            dom = host._call(f"domain {domain!r}", host._conn().lookupByName, domain)
            host._call(what, dom.blockResize, target, volume.capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    return f"grown live to {size} (the running guest sees it)" if target else f"grown to {size}"


def growth_steps(*, logical: bool, live: bool, test_driver: bool = False) -> tuple[str, ...]:
    """How a volume grows, in order: ``pool`` (``virStorageVol.resize``) and/or ``block`` (the
    running domain's ``blockResize``). QEMU grows an image file itself but not a block device, so
    an LVM volume is resized in its pool before the guest is told. The test driver has no block
    resize (and holds no data): there the pool alone grows it."""
    if not live or test_driver:
        return ("pool",)
    return ("pool", "block") if logical else ("block",)


def _running_disk(host: VolumeHost, domain: str, volume: VolumeChange, path: str) -> str | None:
    """The target (vda) under which running ``domain`` uses the volume; None when it does not run,
    or not on this volume (then the volume is grown in its pool)."""
    try:
        dom = host._conn().lookupByName(domain)
        if not dom.isActive():
            return None
        root = etree.fromstring(dom.XMLDesc(0).encode(), _PARSER)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise PermanentHostError(host.name, f"domain {domain!r}: {err.get_error_message()}") from err
    for disk in _disks(root):
        source, target = disk.find("source"), disk.find("target")
        if source is None or target is None:
            continue
        named = (source.get("pool"), source.get("volume")) == (volume.pool, volume.name)
        if named or path in (source.get("file"), source.get("dev")):
            return target.get("dev")
    return None


def _disks(root: etree._Element) -> Iterator[etree._Element]:
    yield from root.iterfind("devices/disk")


def _grow_in_pool(host: VolumeHost, found: libvirt.virStorageVol, volume: VolumeChange) -> None:
    """Grow a volume no running domain uses (through libvirt's volume resize, never with the
    shrink flag); on the test driver, which has none, make it again at the new size."""
    what = f"resize volume {volume.pool}/{volume.name}"
    if not host._is_test_driver:
        host._call(what, found.resize, volume.capacity, 0)
        return
    root = etree.fromstring(str(host._call(what, found.XMLDesc, 0)).encode(), _PARSER)
    capacity = root.find("capacity")
    if capacity is not None:
        capacity.text, capacity.attrib["unit"] = str(volume.capacity), "bytes"
    pool = host._call(what, found.storagePoolLookupByVolume)
    host._call(what, found.delete, 0)
    host._call(what, pool.createXML, etree.tostring(root, encoding="unicode"), 0)


def delete_volume(host: VolumeHost, volume: VolumeChange) -> str:
    """Delete ``volume`` from its pool; one already gone is left gone."""
    pool = _pool(host, volume.pool)
    found = _volume(host, pool, volume)
    if found is None:
        return "already gone"
    host.changed = True
    host._call(f"delete volume {volume.pool}/{volume.name}", found.delete, 0)
    return "deleted"
