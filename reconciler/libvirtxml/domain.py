"""Domain model <-> libvirt domain XML, pure (lxml's ElementTree API, no libvirt).

Three operations:

* :func:`render_domain` writes the XML for a first define;
* :func:`parse_domain` reads the modelled fields (and our ownership metadata) back from any XML;
* :func:`merge_domain` changes only the modelled fields of an existing definition and keeps every
  other element exactly as it was (graphics, channels, controllers, addresses, uuid, MACs...).

Each setter in the merge writes only when the value it would read back differs from the desired
one, so merging a domain with its own parsed model returns the XML unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from reconciler.errors import DomainXMLError
from reconciler.files.content_cache import ContentCache, content_digest
from reconciler.spec.models import BUS_TARGET_PREFIX, Boot, Disk, DomainSpec, Interface, Owner
from reconciler.spec.sizes import KIB, format_size, parse_libvirt_size

OWNER_NS = "https://virt-reconcile.dev/xmlns/owner/v1"
OWNER_PREFIX = "vr"
OWNER_TAG = f"{{{OWNER_NS}}}owner"
_PREFIX_BUS = {"vd": "virtio", "hd": "ide", "sd": "scsi"}
_X86 = ("x86_64", "i686")
_PARSER = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True)


@dataclass(frozen=True)
class ParsedDomain:
    """What the reconciler reads from a domain's XML."""

    name: str
    uuid: str | None
    spec: DomainSpec
    owner: Owner | None


# ------------------------------------------------------------------------------------ parse


def _root(xml: str) -> etree._Element:
    try:
        root = etree.fromstring(xml.encode(), _PARSER)
    except etree.XMLSyntaxError as err:
        raise DomainXMLError(f"not well-formed XML: {err}") from err
    if root.tag != "domain":
        raise DomainXMLError(f"expected a <domain> element, found <{root.tag}>")
    return root


#: Parsed domains by their exact XML: parsing is pure, and a host's XML rarely changes between a
#: daemon's passes (2,000 domains cost ~0.3 s to parse).
_PARSED: dict[str, ParsedDomain] = {}
_PARSED_LIMIT = 4096
_PARSED_LOCK = threading.Lock()


def parse_domain(xml: str, *, state: str = "stopped", autostart: bool = False) -> ParsedDomain:
    """Read the modelled fields of a domain XML; ``state`` and ``autostart`` come from libvirt."""
    parsed = _PARSED.get(xml)
    if parsed is None:
        parsed = _parse(xml)
        _remember(xml, parsed)
    if (parsed.spec.state, parsed.spec.autostart) == (state, autostart):
        return parsed
    if state not in ("running", "stopped"):
        raise ValueError(f"state must be running or stopped, not {state!r}")
    return replace(parsed, spec=parsed.spec.model_copy(update={"state": state, "autostart": bool(autostart)}))


@contextmanager
def cached_parses(cache: ContentCache | None, scope: str, xmls: Sequence[str]) -> Iterator[None]:
    """Within the block, XML parsed in an earlier run (of any process) is not parsed again.

    On entry the memo gets every XML of ``xmls`` the cache holds (read back through pydantic);
    on exit the cache gets what the block parsed, and forgets XML no longer seen in ``scope``.
    A cached domain is a list ``[name, uuid, spec JSON, owner JSON or None]``.
    """
    if cache is None:
        yield
        return
    cache.begin(scope)
    digests = [content_digest(xml) for xml in xmls]
    fresh = []
    for xml, digest in zip(xmls, digests, strict=True):
        entry = cache.get(digest)
        if entry is None:
            fresh.append((xml, digest))
        elif xml not in _PARSED:
            try:
                name, uuid, spec, owner = entry
                if not isinstance(name, str) or not isinstance(uuid, str | None):
                    raise TypeError("name and uuid must be strings")
                parsed = ParsedDomain(
                    name=name,
                    uuid=uuid,
                    spec=DomainSpec.model_validate_json(spec),
                    owner=Owner.model_validate_json(owner) if owner is not None else None,
                )
            except (ValueError, TypeError):
                cache.forget(digest)  # not what this code would have written: parse it again
                fresh.append((xml, digest))
                continue
            _remember(xml, parsed)
    yield
    for xml, digest in fresh:
        if (done := _PARSED.get(xml)) is not None:
            owner = done.owner.model_dump_json(by_alias=True) if done.owner is not None else None
            cache.put(digest, [done.name, done.uuid, done.spec.model_dump_json(by_alias=True), owner])
    cache.finish()


def forget_parsed() -> None:
    """Empty the parsed-XML memo (benchmarks start each run as a new process would)."""
    _PARSED.clear()


def _remember(xml: str, parsed: ParsedDomain) -> None:
    """Memo a parse; past the limit the oldest half goes (a huge host costs speed, never memory)."""
    with _PARSED_LOCK:
        if len(_PARSED) >= _PARSED_LIMIT:
            for old in list(islice(_PARSED, _PARSED_LIMIT // 2)):  # the oldest half
                del _PARSED[old]
        _PARSED[xml] = parsed


def _parse(xml: str) -> ParsedDomain:
    """Children are indexed by tag in one pass: a path lookup per field cost more than reading the XML."""
    root = _root(xml)
    top = _first_children(root)
    name = _text(top.get("name"))
    if not name:
        raise DomainXMLError("domain XML has no <name>")
    os_parts = _first_children(top["os"]) if "os" in top else {}
    os_type = os_parts.get("type")
    memory = _memory_of(top.get("memory"), name)
    devices = top.get("devices")
    disks, nics, balloon = [], [], None
    for device in devices if devices is not None else ():
        if device.tag == "disk":
            disks.append(device)
        elif device.tag == "interface":
            nics.append(device)
        elif device.tag == "memballoon" and balloon is None:
            balloon = device
    kernel, initrd, cmdline = (_text(os_parts.get(tag)) for tag in ("kernel", "initrd", "cmdline"))
    try:
        spec = DomainSpec.model_validate(
            {
                "vcpus": _vcpus_of(top.get("vcpu")),
                "memory": _kib(memory),
                "currentMemory": _kib(_current_memory_of(top.get("currentMemory"), memory)),
                "state": "stopped",
                "autostart": False,
                "type": root.get("type", ""),
                "arch": os_type.get("arch", "x86_64") if os_type is not None else "x86_64",
                "machine": os_type.get("machine") if os_type is not None else None,
                "boot": (
                    Boot(kernel=kernel, initrd=initrd, cmdline=cmdline)
                    if (kernel, initrd, cmdline) != (None, None, None)
                    else _NO_BOOT
                ),
                "disks": tuple(disk for _, disk in _disks_of(disks)),
                "interfaces": tuple(nic for _, nic in _interfaces_of(nics)),
                "balloon": _balloon_of(balloon),
            }
        )
    except (ValueError, TypeError) as err:
        raise DomainXMLError(f"domain {name!r}: {err}") from err
    metadata = top.get("metadata")
    owner = _owner_of(metadata.find(OWNER_TAG) if metadata is not None else None)
    return ParsedDomain(name=name, uuid=_text(top.get("uuid")), spec=spec, owner=owner)


def read_usage(xml: str) -> tuple[int, int, int] | None:
    """vCPUs, maximum and current memory (bytes) of any domain XML, even one the model cannot read.

    The overcommit policy counts every domain on a host; None only when even these are missing.
    """
    try:
        root = _root(xml)
        memory = _memory(root)
        return _vcpus(root), memory, _current_memory(root, memory)
    except (DomainXMLError, ValueError):
        return None


_NO_BOOT = Boot()


def _first_children(element: etree._Element) -> dict[str, etree._Element]:
    """The first child element of each tag (comments and processing instructions skipped)."""
    found: dict[str, etree._Element] = {}
    for child in element:
        tag = child.tag
        if isinstance(tag, str) and tag not in found:
            found[tag] = child
    return found


def _text(element: etree._Element | None) -> str | None:
    """An element's text as ``findtext`` reads it: None when absent, "" when empty."""
    if element is None:
        return None
    return element.text or ""


def _kib(value: int) -> str:
    """A byte count as a size string the model accepts (sizes never travel as bare numbers)."""
    return f"{value // KIB}KiB"


def _vcpus(root: etree._Element) -> int:
    return _vcpus_of(root.find("vcpu"))


def _vcpus_of(element: etree._Element | None) -> int:
    text = _text(element)
    return int(text) if text and text.strip() else 1


def _memory(root: etree._Element) -> int:
    return _memory_of(root.find("memory"), root.findtext("name"))


def _memory_of(element: etree._Element | None, name: str | None) -> int:
    if element is None:
        raise DomainXMLError(f"domain {name!r} has no <memory>")
    return parse_libvirt_size(element.text, element.get("unit"))


def _current_memory(root: etree._Element, memory: int) -> int:
    return _current_memory_of(root.find("currentMemory"), memory)


def _current_memory_of(element: etree._Element | None, memory: int) -> int:
    if element is None:
        return memory
    return min(memory, parse_libvirt_size(element.text, element.get("unit")))


def _disk_path(element: etree._Element) -> str | None:
    source = element.find("source")
    if source is None:
        return None
    return source.get("file") or source.get("dev")


def _modelled_disks(root: etree._Element) -> list[tuple[etree._Element, Disk]]:
    return _disks_of(root.iterfind("devices/disk"))


def _disks_of(elements: Iterable[etree._Element]) -> list[tuple[etree._Element, Disk]]:
    """Disks the model describes: file or block disks (not cdroms, floppies, network disks)."""
    found = []
    for element in elements:
        if element.get("device", "disk") != "disk" or element.get("type", "file") not in ("file", "block"):
            continue
        path, target = _disk_path(element), element.find("target")
        if not path or not path.startswith("/") or target is None or not target.get("dev"):
            continue
        dev = target.get("dev", "")
        bus = target.get("bus") or _PREFIX_BUS.get(dev[:2])
        if bus not in BUS_TARGET_PREFIX:
            continue
        driver = element.find("driver")
        fmt = (driver.get("type") if driver is not None else None) or "raw"
        try:
            disk = Disk.model_validate({"path": path, "format": fmt, "bus": bus, "target": dev})
        except ValueError:
            continue  # something the model cannot express: left alone like any unmodelled device
        found.append((element, disk))
    return found


def _modelled_interfaces(root: etree._Element) -> list[tuple[etree._Element, Interface]]:
    return _interfaces_of(root.iterfind("devices/interface"))


def _interfaces_of(elements: Iterable[etree._Element]) -> list[tuple[etree._Element, Interface]]:
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


def _balloon_of(element: etree._Element | None) -> str:
    return "none" if element is not None and element.get("model") == "none" else "virtio"


def _owner_of(element: etree._Element | None) -> Owner | None:
    if element is None:
        return None
    return Owner(
        manifest=element.get("manifest", ""),
        revision=element.get("revision", ""),
        spec_hash=element.get("specHash", ""),
    )


# ----------------------------------------------------------------------------------- render


def render_domain(name: str, spec: DomainSpec, owner: Owner | None) -> str:
    """The XML for defining a new domain: the modelled fields plus sensible defaults (ACPI, console).

    Written as text with every value escaped: it is the hot path of a first apply (thousands of
    domains) and an order of magnitude faster than building an element tree.
    """
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
    lines += [_disk_xml(disk) for disk in spec.disks]
    lines += [_interface_xml(nic) for nic in spec.interfaces]
    lines += [
        "    <serial type='pty'/>",
        "    <console type='pty'/>",
        f"    <memballoon model={quoteattr(spec.balloon)}/>",
        "  </devices>",
        "</domain>",
    ]
    return "\n".join(lines)


def _disk_xml(disk: Disk) -> str:
    block = disk.path.startswith("/dev/")
    source = f"<source {'dev' if block else 'file'}={quoteattr(disk.path)}/>"
    return (
        f"    <disk type='{'block' if block else 'file'}' device='disk'>"
        f"<driver name='qemu' type={quoteattr(disk.format)}/>{source}"
        f"<target dev={quoteattr(disk.target or '')} bus={quoteattr(disk.bus)}/></disk>"
    )


def _interface_xml(nic: Interface) -> str:
    kind = "network" if nic.network else "bridge"
    mac = f"<mac address={quoteattr(nic.mac)}/>" if nic.mac else ""
    model = f"<model type={quoteattr(nic.model)}/>" if nic.model else ""
    source = f"<source {kind}={quoteattr(nic.network or nic.bridge or '')}/>"
    return f"    <interface type='{kind}'>{mac}{source}{model}</interface>"


def _new_disk(disk: Disk) -> etree._Element:
    return etree.fromstring(_disk_xml(disk).strip())


def _new_interface(nic: Interface) -> etree._Element:
    return etree.fromstring(_interface_xml(nic).strip())


# ------------------------------------------------------------------------------------ merge


def merge_domain(xml: str, spec: DomainSpec, owner: Owner | None) -> str:
    """Apply the modelled fields of ``spec`` to an existing definition, keeping everything else.

    ``spec`` is the desired spec already normalised against what was observed (see
    ``diff.normalise``), so fields libvirt fills in (machine versions, MACs) compare equal and
    are left untouched. ``owner`` None leaves the metadata as it is.
    """
    root = _root(xml)
    current = parse_domain(xml)
    name = current.name
    old = current.spec
    if spec.type != old.type:
        root.set("type", spec.type)
    os_type = _ensure(root, "os", "type")
    if spec.arch != old.arch:
        os_type.set("arch", spec.arch)
    if spec.machine is not None and spec.machine != old.machine:
        os_type.set("machine", spec.machine)
    if spec.memory != old.memory:
        _set_memory(root, spec.memory, name)
    if _current_memory(root, spec.memory) != spec.current_memory:
        _set_current_memory(root, spec.current_memory)
    if spec.vcpus != old.vcpus:
        _set_vcpus(root, spec.vcpus, name)
    if spec.boot != old.boot:
        _set_boot(root, spec.boot)
    if spec.disks != old.disks:
        _merge_disks(root, spec.disks)
    if spec.interfaces != old.interfaces:
        _merge_interfaces(root, spec.interfaces)
    if spec.balloon != old.balloon:
        _set_balloon(root, spec.balloon)
    if owner is not None and owner != current.owner:
        _set_owner(root, owner)
    return etree.tostring(root, encoding="unicode")


def _ensure(root: etree._Element, *path: str) -> etree._Element:
    element = root
    for tag in path:
        child = element.find(tag)
        element = child if child is not None else etree.SubElement(element, tag)
    return element


def _insert_after(root: etree._Element, tag: str, after: str) -> etree._Element:
    """Find ``tag`` under root, or create it right after ``after`` (libvirt's canonical order)."""
    element = root.find(tag)
    if element is not None:
        return element
    element = etree.Element(tag)
    anchor = root.find(after)
    if anchor is not None:
        anchor.addnext(element)
        element.tail = anchor.tail
    else:
        root.append(element)
    return element


def _set_memory(root: etree._Element, memory: int, name: str) -> None:
    cells = root.findall("cpu/numa/cell")
    if len(cells) > 1:
        raise DomainXMLError(
            f"domain {name!r}: its memory is the sum of {len(cells)} NUMA cells; change the cells' "
            f"memory in the domain XML instead of spec.memory ({format_size(memory)})"
        )
    element = _insert_after(root, "memory", "name")
    element.text = str(memory // KIB)
    element.set("unit", "KiB")
    if cells:
        cells[0].set("memory", str(memory // KIB))
        cells[0].set("unit", "KiB")


def _set_current_memory(root: etree._Element, current: int) -> None:
    element = _insert_after(root, "currentMemory", "memory")
    element.text = str(current // KIB)
    element.set("unit", "KiB")


def _set_vcpus(root: etree._Element, vcpus: int, name: str) -> None:
    if root.find("cpu/numa/cell") is not None:
        raise DomainXMLError(
            f"domain {name!r}: its vCPUs are assigned to NUMA cells; change them in the domain XML"
        )
    element = _insert_after(root, "vcpu", "currentMemory")
    element.text = str(vcpus)
    _drop(element, "current")
    per_vcpu = root.find("vcpus")
    if per_vcpu is not None:
        root.remove(per_vcpu)  # one entry per vCPU: libvirt recreates them for the new count
    topology = root.find("cpu/topology")
    if topology is not None:
        inner = 1
        for attribute in ("dies", "clusters", "cores", "threads"):
            inner *= int(topology.get(attribute, "1"))
        if vcpus % inner == 0:
            topology.set("sockets", str(vcpus // inner))
        else:
            topology.set("sockets", str(vcpus))
            for attribute in ("dies", "clusters", "cores", "threads"):
                if topology.get(attribute) is not None:
                    topology.set(attribute, "1")


def _set_boot(root: etree._Element, boot: Boot) -> None:
    os_element = _ensure(root, "os")
    anchor = os_element.find("type")
    for tag in ("kernel", "initrd", "cmdline"):
        value = getattr(boot, tag)
        element = os_element.find(tag)
        if value is None:
            if element is not None:
                os_element.remove(element)
            continue
        if element is None:
            element = etree.Element(tag)
            if anchor is not None:
                anchor.addnext(element)
            else:
                os_element.append(element)
        element.text = value
        anchor = element


def _merge_disks(root: etree._Element, disks: tuple[Disk, ...]) -> None:
    devices = _ensure(root, "devices")
    existing = {disk.target: (element, disk) for element, disk in _modelled_disks(root)}
    wanted = {disk.target for disk in disks}
    for target, (element, _) in existing.items():
        if target not in wanted:
            devices.remove(element)
    last = None
    for disk in disks:
        if disk.target in existing:
            element, old = existing[disk.target]
            if disk != old:
                _update_disk(element, disk, old)
        else:
            element = _new_disk(disk)
            anchor = last if last is not None else _last(devices, "disk")
            if anchor is not None:
                anchor.addnext(element)
            else:
                devices.insert(0, element)
        last = element


def _update_disk(element: etree._Element, disk: Disk, old: Disk) -> None:
    if disk.path != old.path:
        block = disk.path.startswith("/dev/")
        element.set("type", "block" if block else "file")
        source = _ensure(element, "source")
        _drop(source, "file", "dev")
        source.set("dev" if block else "file", disk.path)
    if disk.format != old.format:
        driver = element.find("driver")
        if driver is None:
            driver = etree.Element("driver", name="qemu")
            element.insert(0, driver)
        driver.set("type", disk.format)
    if disk.bus != old.bus:
        _ensure(element, "target").set("bus", disk.bus)
        address = element.find("address")
        if address is not None:
            element.remove(address)  # an address of the old bus's kind; libvirt assigns a new one


def _merge_interfaces(root: etree._Element, nics: tuple[Interface, ...]) -> None:
    devices = _ensure(root, "devices")
    existing = _modelled_interfaces(root)
    for element, _ in existing[len(nics) :]:
        devices.remove(element)
    last = None
    for index, nic in enumerate(nics):
        if index < len(existing):
            element, old = existing[index]
            if nic != old:
                _update_interface(element, nic, old)
        else:
            element = _new_interface(nic)
            anchor = last if last is not None else _last(devices, "interface") or _last(devices, "disk")
            if anchor is not None:
                anchor.addnext(element)
            else:
                devices.append(element)
        last = element


def _update_interface(element: etree._Element, nic: Interface, old: Interface) -> None:
    kind = "network" if nic.network else "bridge"
    if (nic.network, nic.bridge) != (old.network, old.bridge):
        element.set("type", kind)
        source = _ensure(element, "source")
        _drop(source, "network", "bridge")
        source.set(kind, nic.network or nic.bridge or "")
    if nic.model != old.model:
        model = element.find("model")
        if nic.model is None:
            if model is not None:
                element.remove(model)
        else:
            _ensure(element, "model").set("type", nic.model)
    if nic.mac is not None and nic.mac != old.mac:
        _ensure(element, "mac").set("address", nic.mac)


def _set_balloon(root: etree._Element, balloon: str) -> None:
    devices = _ensure(root, "devices")
    element = devices.find("memballoon")
    if element is None:
        element = etree.SubElement(devices, "memballoon")
    element.set("model", balloon)
    if balloon == "none":
        for child in list(element):
            element.remove(child)  # stats and address only make sense for a real balloon device


def _set_owner(root: etree._Element, owner: Owner) -> None:
    metadata = _insert_after(root, "metadata", "uuid") if root.find("uuid") is not None else None
    if metadata is None:
        metadata = _insert_after(root, "metadata", "name")
    element = metadata.find(OWNER_TAG)
    if element is None:
        element = etree.SubElement(metadata, OWNER_TAG, nsmap={OWNER_PREFIX: OWNER_NS})
    element.set("manifest", owner.manifest)
    element.set("revision", owner.revision)
    element.set("specHash", owner.spec_hash)


def owner_metadata(owner: Owner) -> str:
    """The ownership element for libvirt's metadata call, which adds our namespace itself."""
    return (
        f"<owner manifest={quoteattr(owner.manifest)} revision={quoteattr(owner.revision)} "
        f"specHash={quoteattr(owner.spec_hash)}/>"
    )


def owner_xml(owner: Owner) -> str:
    """The ownership element alone: for a new domain's XML and libvirt's metadata call (import)."""
    return (
        f"<{OWNER_PREFIX}:owner xmlns:{OWNER_PREFIX}={quoteattr(OWNER_NS)} "
        f"manifest={quoteattr(owner.manifest)} revision={quoteattr(owner.revision)} "
        f"specHash={quoteattr(owner.spec_hash)}/>"
    )


def _drop(element: etree._Element, *attributes: str) -> None:
    """Remove attributes that may or may not be there."""
    for attribute in attributes:
        if attribute in element.attrib:
            del element.attrib[attribute]


def _last(parent: etree._Element, tag: str) -> etree._Element | None:
    found = parent.findall(tag)
    return found[-1] if found else None
