"""Merge a spec into an existing domain definition, keeping every element the manifest does not model.

:func:`merge_domain` changes only the modelled fields (type, arch, machine, memory, vCPUs, direct
kernel boot, disks, NICs, balloon, the seed cdrom, the first VNC/SPICE graphics and the pty serial
console when the manifest sets them, our owner metadata) and keeps every other element exactly as it
was: other graphics, channels, controllers, addresses, uuid, MACs, ``<cputune>``, ``<seclabel>``,
``qemu:commandline``, other tools' ``<metadata>``.

Each step writes only when the value it would read back differs from the desired one, so merging
a domain with its own parsed model returns the XML unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.fields import current_memory_of
from reconciler.libvirtxml.merge_consoles import merge_consoles
from reconciler.libvirtxml.merge_devices import merge_balloon, merge_disks, merge_interfaces
from reconciler.libvirtxml.ownership import write_owner
from reconciler.libvirtxml.parse import ParsedDomain, parse_domain
from reconciler.libvirtxml.tree import add_after, add_last, domain_root, drop, ensure, insert_after, remove
from reconciler.spec.models import DomainSpec, Owner
from reconciler.spec.sizes import KIB, format_size

#: One merge step: set what it owns in the tree when ``spec`` differs from the parsed domain.
MergeStep = Callable[[etree._Element, DomainSpec, ParsedDomain], None]


def merge_domain(xml: str, spec: DomainSpec, owner: Owner | None) -> str:
    """Apply the modelled fields of ``spec`` to an existing definition, keeping everything else.

    ``spec`` is the desired spec already normalised against what was observed (see
    ``diff.normalise``), so fields libvirt fills in (machine versions, MACs) compare equal and
    are left untouched. ``owner`` None leaves the metadata as it is.
    """
    root = domain_root(xml)
    current = parse_domain(xml)
    for step in _STEPS:
        step(root, spec, current)
    if owner is not None and owner != current.owner:
        write_owner(root, owner)
    return etree.tostring(root, encoding="unicode")


def _merge_platform(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """Hypervisor type, architecture and machine type (None: whatever libvirt chose)."""
    old = current.spec
    if spec.type != old.type:
        root.set("type", spec.type)
    if spec.arch != old.arch:
        ensure(root, "os", "type").set("arch", spec.arch)
    if spec.machine is not None and spec.machine != old.machine:
        ensure(root, "os", "type").set("machine", spec.machine)


def _merge_memory(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """Maximum memory (and a single NUMA cell's, which must match it), then the balloon target."""
    if spec.memory != current.spec.memory:
        _set_memory(root, spec.memory, current.name)
    if current_memory_of(root.find("currentMemory"), spec.memory) != spec.current_memory:
        element = insert_after(root, "currentMemory", "memory")
        element.text = str(spec.current_memory // KIB)
        element.set("unit", "KiB")


def _set_memory(root: etree._Element, memory: int, name: str) -> None:
    cells = root.findall("cpu/numa/cell")
    if len(cells) > 1:
        raise DomainXMLError(
            f"domain {name!r}: its memory is the sum of {len(cells)} NUMA cells; change the cells' "
            f"memory in the domain XML instead of spec.memory ({format_size(memory)})"
        )
    element = insert_after(root, "memory", "name")
    element.text = str(memory // KIB)
    element.set("unit", "KiB")
    if cells:
        cells[0].set("memory", str(memory // KIB))
        cells[0].set("unit", "KiB")


def _merge_vcpus(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """The vCPU count, with the CPU topology's sockets fitted to it; refused with NUMA cells."""
    if spec.vcpus == current.spec.vcpus:
        return
    if root.find("cpu/numa/cell") is not None:
        raise DomainXMLError(
            f"domain {current.name!r}: its vCPUs are assigned to NUMA cells; change them in the domain XML"
        )
    element = insert_after(root, "vcpu", "currentMemory")
    element.text = str(spec.vcpus)
    drop(element, "current")
    per_vcpu = root.find("vcpus")
    if per_vcpu is not None:
        remove(per_vcpu)  # one entry per vCPU: libvirt recreates them for the new count
    topology = root.find("cpu/topology")
    if topology is not None:
        _fit_topology(topology, spec.vcpus)


_INNER_TOPOLOGY = ("dies", "clusters", "cores", "threads")


def _fit_topology(topology: etree._Element, vcpus: int) -> None:
    """Keep dies/clusters/cores/threads and scale sockets, or flatten to one core per socket."""
    inner = 1
    for attribute in _INNER_TOPOLOGY:
        inner *= int(topology.get(attribute, "1"))
    if vcpus % inner == 0:
        topology.set("sockets", str(vcpus // inner))
        return
    topology.set("sockets", str(vcpus))
    for attribute in _INNER_TOPOLOGY:
        if topology.get(attribute) is not None:
            topology.set(attribute, "1")


def _merge_boot(root: etree._Element, spec: DomainSpec, current: ParsedDomain) -> None:
    """Direct kernel boot: kernel, initrd and cmdline right after ``<os><type>``, absent when None."""
    if spec.boot == current.spec.boot:
        return
    os_element = ensure(root, "os")
    anchor = os_element.find("type")
    for tag in ("kernel", "initrd", "cmdline"):
        value = getattr(spec.boot, tag)
        element = os_element.find(tag)
        if value is None:
            if element is not None:
                remove(element)
            continue
        if element is None:
            new = etree.Element(tag)
            element = add_after(anchor, new) if anchor is not None else add_last(os_element, new)
        element.text = value
        anchor = element


_STEPS: tuple[MergeStep, ...] = (
    _merge_platform,
    _merge_memory,
    _merge_vcpus,
    _merge_boot,
    merge_disks,
    merge_interfaces,
    merge_balloon,
    merge_consoles,
)
