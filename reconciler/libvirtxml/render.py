"""A new domain's XML, for a first define: the modelled fields plus sensible defaults (ACPI, console).

Written as text with every value escaped: it is the hot path of a first apply (thousands of
domains) and an order of magnitude faster than building an element tree. The device snippets are
also what :mod:`.merge` inserts for a disk or NIC the existing definition lacks.
"""

from __future__ import annotations

from lxml import etree

from reconciler.libvirtxml.consoles import console_xml
from reconciler.libvirtxml.ownership import owner_xml
from reconciler.libvirtxml.xmltext import escaped, quoted
from reconciler.spec.disks import Disk
from reconciler.spec.models import DomainSpec, Interface, Owner
from reconciler.spec.sizes import KIB

_X86 = ("x86_64", "i686")


def render_domain(name: str, spec: DomainSpec, owner: Owner | None) -> str:
    """The XML for defining a new domain named ``name`` (with our owner metadata unless None)."""
    machine = f" machine={quoted(spec.machine)}" if spec.machine else ""
    lines = [
        f"<domain type={quoted(spec.type)}>",
        f"  <name>{escaped(name)}</name>",
    ]
    if owner is not None:
        lines.append(f"  <metadata>\n    {owner_xml(owner)}\n  </metadata>")
    lines += [
        f"  <memory unit='KiB'>{spec.memory // KIB}</memory>",
        f"  <currentMemory unit='KiB'>{spec.current_memory // KIB}</currentMemory>",
        f"  <vcpu>{spec.vcpus}</vcpu>",
        "  <os>",
        f"    <type arch={quoted(spec.arch)}{machine}>hvm</type>",
    ]
    lines += [
        f"    <{tag}>{escaped(value)}</{tag}>"
        for tag, value in (
            ("kernel", spec.boot.kernel),
            ("initrd", spec.boot.initrd),
            ("cmdline", spec.boot.cmdline),
        )
        if value is not None
    ]
    lines.append("  </os>")
    if spec.arch in _X86:
        lines.append("  <features><acpi/><apic/></features>")
    lines.append("  <devices>")
    lines += [disk_xml(disk) for disk in spec.disks]
    lines += [interface_xml(nic) for nic in spec.interfaces]
    lines += console_xml(name, spec)  # the seed cdrom, graphics, serial console
    lines += [
        f"    <memballoon model={quoted(spec.balloon)}/>",
        "  </devices>",
        "</domain>",
    ]
    return "\n".join(lines)


def disk_xml(disk: Disk) -> str:
    """One ``<disk>`` line of a new domain's ``<devices>``: a file, a block device, or a volume of a
    pool named by pool and volume (libvirt finds its path when the domain starts, and the name reads
    back as the manifest wrote it)."""
    kind = disk_type(disk)
    if disk.volume is not None:
        source = f"<source pool={quoted(disk.volume.pool)} volume={quoted(disk.volume.name)}/>"
    else:
        source = f"<source {'dev' if kind == 'block' else 'file'}={quoted(disk.path or '')}/>"
    return (
        f"    <disk type='{kind}' device='disk'>"
        f"<driver name='qemu' type={quoted(disk.format)}/>{source}"
        f"<target dev={quoted(disk.target or '')} bus={quoted(disk.bus)}/></disk>"
    )


def disk_type(disk: Disk) -> str:
    """libvirt's disk type: ``volume`` for a pool's volume, ``block`` under /dev, else ``file``."""
    if disk.volume is not None:
        return "volume"
    return "block" if (disk.path or "").startswith("/dev/") else "file"


def interface_xml(nic: Interface) -> str:
    """One ``<interface>`` line of a new domain's ``<devices>``."""
    kind = "network" if nic.network else "bridge"
    mac = f"<mac address={quoted(nic.mac)}/>" if nic.mac else ""
    model = f"<model type={quoted(nic.model)}/>" if nic.model else ""
    source = f"<source {kind}={quoted(nic.network or nic.bridge or '')}/>"
    return f"    <interface type='{kind}'>{mac}{source}{model}</interface>"


def new_disk(disk: Disk) -> etree._Element:
    """A ``<disk>`` element as a new domain would have it."""
    return etree.fromstring(disk_xml(disk).strip())


def new_interface(nic: Interface) -> etree._Element:
    """An ``<interface>`` element as a new domain would have it."""
    return etree.fromstring(interface_xml(nic).strip())
