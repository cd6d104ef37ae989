"""The ``<devices>`` part of a merge: disks by target, NICs by position, the memory balloon.

A device the model does not describe (cdrom, network disk, hostdev, a NIC of another type) is
never touched; a modelled one keeps every attribute and child the model does not set (driver
cache, address, boot order, MAC...).
"""

from __future__ import annotations

from lxml import etree

from reconciler.libvirtxml.fields import disks_of, interfaces_of
from reconciler.libvirtxml.parse import ParsedDomain
from reconciler.libvirtxml.render import disk_type, new_disk, new_interface
from reconciler.libvirtxml.tree import add_after, add_first, add_last, drop, ensure, last, remove
from reconciler.spec.disks import Disk
from reconciler.spec.models import DomainSpec, Interface


def merge_disks(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """Disks matched by target: gone ones removed, changed ones updated, and a new one placed after
    the disk before it in the spec (the first after the last ``<disk>``, cdroms included)."""
    if spec.disks == current.spec.disks:
        return
    devices = ensure(root, "devices")
    existing = {disk.target: (element, disk) for element, disk in disks_of(root.iterfind("devices/disk"))}
    wanted = {disk.target for disk in spec.disks}
    for target, (element, _) in existing.items():
        if target not in wanted:
            remove(element)
    previous = None
    for disk in spec.disks:
        found = existing.get(disk.target)
        if found is None:
            anchor = previous if previous is not None else last(devices, "disk")
            element = (
                add_after(anchor, new_disk(disk))
                if anchor is not None
                else add_first(devices, new_disk(disk))
            )
        else:
            element = found[0]
            if disk != found[1]:
                _update_disk(element, disk, found[1])
        previous = element


def _update_disk(element: etree._Element, disk: Disk, old: Disk) -> None:
    if (disk.path, _volume_name(disk)) != (old.path, _volume_name(old)):
        kind = disk_type(disk)
        element.set("type", kind)
        source = ensure(element, "source")
        drop(source, "file", "dev", "pool", "volume")
        if disk.volume is not None:
            source.set("pool", disk.volume.pool)
            source.set("volume", disk.volume.name)
        else:
            source.set("dev" if kind == "block" else "file", disk.path or "")
    if disk.format != old.format:
        driver = element.find("driver")
        if driver is None:
            driver = add_first(element, etree.Element("driver", name="qemu"))
        driver.set("type", disk.format)
    if disk.bus != old.bus:
        ensure(element, "target").set("bus", disk.bus)
        address = element.find("address")
        if address is not None:
            remove(address)  # an address of the old bus's kind; libvirt assigns a new one


def _volume_name(disk: Disk) -> tuple[str, str] | None:
    """The volume a disk names (its size and base image are the pool's business, not the XML's)."""
    return (disk.volume.pool, disk.volume.name) if disk.volume is not None else None


def merge_interfaces(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """NICs matched by position: extra ones removed, changed ones updated, new ones after the last NIC."""
    if spec.interfaces == current.spec.interfaces:
        return
    devices = ensure(root, "devices")
    existing = interfaces_of(root.iterfind("devices/interface"))
    for element, _ in existing[len(spec.interfaces) :]:
        remove(element)
    previous = None
    for index, nic in enumerate(spec.interfaces):
        if index < len(existing):
            element, old = existing[index]
            if nic != old:
                _update_interface(element, nic, old)
        else:
            anchor = previous if previous is not None else last(devices, "interface", "disk")
            new = new_interface(nic)
            element = add_after(anchor, new) if anchor is not None else add_last(devices, new)
        previous = element


def _update_interface(element: etree._Element, nic: Interface, old: Interface) -> None:
    if (nic.network, nic.bridge) != (old.network, old.bridge):
        kind = "network" if nic.network else "bridge"
        element.set("type", kind)
        source = ensure(element, "source")
        drop(source, "network", "bridge")
        source.set(kind, nic.network or nic.bridge or "")
    if nic.model != old.model:
        model = element.find("model")
        if nic.model is not None:
            ensure(element, "model").set("type", nic.model)
        elif model is not None:
            remove(model)
    if nic.mac is not None and nic.mac != old.mac:
        ensure(element, "mac").set("address", nic.mac)


def merge_balloon(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """The ``<memballoon>`` model; ``none`` drops its children (stats, address), meaningless then."""
    if spec.balloon == current.spec.balloon:
        return
    devices = ensure(root, "devices")
    element = devices.find("memballoon")
    if element is None:
        element = add_last(devices, etree.Element("memballoon"))
    element.set("model", spec.balloon)
    if spec.balloon == "none":
        for child in list(element):
            element.remove(child)
        element.text = None
