"""Reading the modelled fields off domain XML elements: shared by parsing and merging.

Each reader takes the element(s) it needs, not the whole document, so :mod:`.parse` can index a
domain's children once and :mod:`.merge` can compare an element with what it would write.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.tree import text
from reconciler.spec.disks import Disk
from reconciler.spec.models import BUS_TARGET_PREFIX, Interface
from reconciler.spec.sizes import KIB, parse_libvirt_size
from reconciler.spec.storage import FROM_DEFINITION

_PREFIX_BUS = {"vd": "virtio", "hd": "ide", "sd": "scsi"}


def kib(value: int) -> str:
    """A byte count as a size string the model accepts (sizes never travel as bare numbers)."""
    return f"{value // KIB}KiB"


def vcpus_of(element: etree._Element | None) -> int:
    """The ``<vcpu>`` count; 1 when absent or empty, as libvirt reads it."""
    count = text(element)
    return int(count) if count and count.strip() else 1


def memory_of(element: etree._Element | None, name: str | None) -> int:
    """The ``<memory>`` size in bytes; DomainXMLError when absent (libvirt requires it)."""
    if element is None:
        raise DomainXMLError(f"domain {name!r} has no <memory>")
    return parse_libvirt_size(element.text, element.get("unit"))


def current_memory_of(element: etree._Element | None, memory: int) -> int:
    """The ``<currentMemory>`` size in bytes, never above ``memory``; ``memory`` when absent."""
    if element is None:
        return memory
    return min(memory, parse_libvirt_size(element.text, element.get("unit")))


def disks_of(elements: Iterable[etree._Element]) -> list[tuple[etree._Element, Disk]]:
    """Disks the model describes: file, block or pool volume disks (not cdroms, floppies, network disks)."""
    found = []
    for element in elements:
        if element.get("device", "disk") == "disk" and element.get("type", "file") in _DISK_TYPES:
            disk = _disk_of(element)
            if disk is not None:
                found.append((element, disk))
    return found


_DISK_TYPES = ("file", "block", "volume")


def _disk_of(element: etree._Element) -> Disk | None:
    source, target = element.find("source"), element.find("target")
    if source is None or target is None or not target.get("dev"):
        return None
    if element.get("type") == "volume":
        where: dict[str, object] = {"volume": _volume_of(source)}
    else:
        path = source.get("file") or source.get("dev")
        where = {"path": path}
        if not path or not path.startswith("/"):
            return None
    dev = target.get("dev", "")
    bus = target.get("bus") or _PREFIX_BUS.get(dev[:2])
    if bus not in BUS_TARGET_PREFIX:
        return None
    driver = element.find("driver")
    fmt = (driver.get("type") if driver is not None else None) or "raw"
    try:
        fields = {**where, "format": fmt, "bus": bus, "target": dev}
        return Disk.model_validate(fields, context=FROM_DEFINITION)
    except ValueError:
        return None  # something the model cannot express: left alone like any unmodelled device


def _volume_of(source: etree._Element) -> dict[str, str | None]:
    """A ``<source pool= volume=>`` as the model's volume: named, not sized (the pool knows its size)."""
    return {"pool": source.get("pool"), "name": source.get("volume")}


def interfaces_of(elements: Iterable[etree._Element]) -> list[tuple[etree._Element, Interface]]:
    """NICs the model describes: on a libvirt network or a host bridge."""
    found = []
    for element in elements:
        kind = element.get("type")
        source = element.find("source")
        if kind not in ("network", "bridge") or source is None or not source.get(kind):
            continue
        model = element.find("model")
        mac = element.find("mac")
        try:
            nic = Interface(
                network=source.get("network") if kind == "network" else None,
                bridge=source.get("bridge") if kind == "bridge" else None,
                model=model.get("type") if model is not None else None,
                mac=mac.get("address") if mac is not None else None,
            )
        except ValueError:
            continue
        found.append((element, nic))
    return found


def balloon_of(element: etree._Element | None) -> str:
    """The ``<memballoon>`` model as the spec names it: ``none`` or ``virtio`` (any real balloon)."""
    return "none" if element is not None and element.get("model") == "none" else "virtio"
