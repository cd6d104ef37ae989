"""A new domain's XML, for a first define: the modelled fields plus sensible defaults (ACPI, console).

Written as text with every value escaped: it is the hot path of a first apply (thousands of
domains) and an order of magnitude faster than building an element tree. The device snippets are
also what :mod:`.merge` inserts for a disk or NIC the existing definition lacks.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from reconciler.libvirtxml.ownership import owner_xml
from reconciler.spec.models import Disk, DomainSpec, Interface, Owner
from reconciler.spec.sizes import KIB

_X86 = ("x86_64", "i686")


def render_domain(name: str, spec: DomainSpec, owner: Owner | None) -> str:
    """The XML for defining a new domain named ``name`` (with our owner metadata unless None)."""
    machine = f" machine={quoteattr(spec.machine)}" if spec.machine else ""
    lines = [
        f"<domain type={quoteattr(spec.type)}>",
        f"  <name>{escape(name)}</name>",
    ]
    if owner is not None:
        lines.append(f"  <metadata>\n    {owner_xml(owner)}\n  </metadata>")
    lines += [
        f"  <memory unit='KiB'>{spec.memory // KIB}</memory>",
        f"  <currentMemory unit='KiB'>{spec.current_memory // KIB}</currentMemory>",
        f"  <vcpu>{spec.vcpus}</vcpu>",
        "  <os>",
        f"    <type arch={quoteattr(spec.arch)}{machine}>hvm</type>",
    ]
    lines += [
        f"    <{tag}>{escape(value)}</{tag}>"
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
    lines += [
        "    <serial type='pty'/>",
        "    <console type='pty'/>",
        f"    <memballoon model={quoteattr(spec.balloon)}/>",
        "  </devices>",
        "</domain>",
    ]
    return "\n".join(lines)


def disk_xml(disk: Disk) -> str:
    """One ``<disk>`` line of a new domain's ``<devices>``."""
    block = disk.path.startswith("/dev/")
    source = f"<source {'dev' if block else 'file'}={quoteattr(disk.path)}/>"
    return (
        f"    <disk type='{'block' if block else 'file'}' device='disk'>"
        f"<driver name='qemu' type={quoteattr(disk.format)}/>{source}"
        f"<target dev={quoteattr(disk.target or '')} bus={quoteattr(disk.bus)}/></disk>"
    )


def interface_xml(nic: Interface) -> str:
    """One ``<interface>`` line of a new domain's ``<devices>``."""
    kind = "network" if nic.network else "bridge"
    mac = f"<mac address={quoteattr(nic.mac)}/>" if nic.mac else ""
    model = f"<model type={quoteattr(nic.model)}/>" if nic.model else ""
    source = f"<source {kind}={quoteattr(nic.network or nic.bridge or '')}/>"
    return f"    <interface type='{kind}'>{mac}{source}{model}</interface>"


def new_disk(disk: Disk) -> etree._Element:
    """A ``<disk>`` element as a new domain would have it."""
    return etree.fromstring(disk_xml(disk).strip())


def new_interface(nic: Interface) -> etree._Element:
    """An ``<interface>`` element as a new domain would have it."""
    return etree.fromstring(interface_xml(nic).strip())
