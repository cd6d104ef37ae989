"""The merge step for the devices of :mod:`.consoles`: the seed cdrom, graphics and serial console.

Each is written only when the desired value differs from what the definition holds, and only the
parts the model describes change (see :mod:`.consoles`).
"""

from __future__ import annotations

from lxml import etree

from reconciler.libvirtxml.consoles import (
    MODELLED_GRAPHICS,
    SEED_BUS_PREFIX,
    graphics_xml,
    is_seed,
    on_serial,
    seed_bus,
    seed_target,
    seed_xml,
)
from reconciler.libvirtxml.parse import ParsedDomain
from reconciler.libvirtxml.tree import add_after, add_first, add_last, drop, ensure, last, remove
from reconciler.spec.consoles import Graphics
from reconciler.spec.models import DomainSpec


def merge_consoles(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """Set the seed cdrom, graphics and serial console where ``spec`` differs from ``current``."""
    old = current.spec
    name = current.name
    if spec.cloud_init != old.cloud_init or _seed_target_taken(root, spec, name):
        _merge_seed(root, spec, name)
    if spec.graphics is not None and spec.graphics != old.graphics:
        _merge_graphics(ensure(root, "devices"), spec.graphics)
    if spec.serial is not None and spec.serial != old.serial:
        _merge_serial(ensure(root, "devices"), on=spec.serial)


def _seed_element(root: etree._Element, name: str) -> etree._Element | None:
    return next((disk for disk in root.iterfind("devices/disk") if is_seed(disk, name)), None)


def _seed_target_taken(root: etree._Element, spec: DomainSpec, name: str) -> bool:
    """Whether a disk of the spec now uses the seed cdrom's device name (it must move aside)."""
    element = _seed_element(root, name)
    target = element.find("target") if element is not None else None
    return target is not None and target.get("dev") in {disk.target for disk in spec.disks}


def _merge_seed(root: etree._Element, spec: DomainSpec, name: str) -> None:
    """Add, move (to another pool or device name) or remove the seed cdrom."""
    element = _seed_element(root, name)
    pool = spec.cloud_init.pool if spec.cloud_init is not None else None
    if pool is None:
        if element is not None:
            remove(element)
        return
    if element is None:
        devices = ensure(root, "devices")
        new = etree.fromstring(seed_xml(name, pool, spec))
        anchor = last(devices, "disk")
        add_after(anchor, new) if anchor is not None else add_first(devices, new)
        return
    ensure(element, "source").set("pool", pool)
    target = ensure(element, "target")
    if target.get("dev") in {disk.target for disk in spec.disks}:
        bus = target.get("bus") or seed_bus(spec)
        target.set("dev", seed_target(spec, bus if bus in SEED_BUS_PREFIX else seed_bus(spec)))
        address = element.find("address")
        if address is not None:
            remove(address)


def _merge_graphics(devices: etree._Element, graphics: Graphics) -> None:
    """Update the first vnc/spice graphics in place when of the same type; else replace it (or add one)."""
    element = next((g for g in devices.iterfind("graphics") if g.get("type") in MODELLED_GRAPHICS), None)
    if element is None or element.get("type") != graphics.type:
        new = etree.fromstring(graphics_xml(graphics))
        anchor = element if element is not None else last(devices, "graphics", "input", "serial", "console")
        add_after(anchor, new) if anchor is not None else add_last(devices, new)
        if element is not None:
            remove(element)
        return
    if graphics.port == "auto":
        element.set("port", "-1")
        element.set("autoport", "yes")
    else:
        element.set("port", str(graphics.port))
        element.set("autoport", "no")
    drop(element, "socket")
    element.set("listen", graphics.listen)
    listen = element.find("listen")
    if listen is None:
        listen = add_first(element, etree.Element("listen"))
    for attribute in list(listen.attrib):
        del listen.attrib[attribute]
    listen.set("type", "address")
    listen.set("address", graphics.listen)


def _merge_serial(devices: etree._Element, *, on: bool) -> None:
    """Add a pty serial port with a console on it, or remove every pty serial and its console."""
    if on:
        anchor = last(devices, "serial", "console", "interface", "disk")
        serial = etree.Element("serial", type="pty")
        add_after(anchor, serial) if anchor is not None else add_last(devices, serial)
        if devices.find("console") is None:
            add_after(serial, etree.Element("console", type="pty"))
        return
    for element in list(devices):
        if element.tag == "serial" and element.get("type") == "pty":
            remove(element)
        elif element.tag == "console" and element.get("type") == "pty" and on_serial(element):
            remove(element)  # left behind, it would make libvirt add a serial port for it again
