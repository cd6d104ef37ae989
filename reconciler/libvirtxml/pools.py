"""Storage pool and volume XML: a Pool manifest rendered for a first define, and the few facts the
plan reads back from libvirt's pool and volume XML (pure).

A pool is only ever defined from this XML, never redefined: an existing pool of the manifest's
name is adopted when its type and target agree (see :mod:`reconciler.engine.pools`), so the
rendered XML holds only what the manifest says (libvirt fills in the rest: uuid, permissions).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from lxml import etree

from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.xmltext import escaped, quoted
from reconciler.spec.sizes import parse_libvirt_size
from reconciler.spec.storage import Pool

#: libvirt's XML never needs entities, a DTD or the network: none is taken.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def render_pool(pool: Pool) -> str:
    """The XML that defines ``pool``: a dir pool's folder, or a logical pool's volume group (its
    devices, when given, are what ``build`` makes it on)."""
    lines = [f"<pool type={quoted(pool.spec.type)}>", f"  <name>{escaped(pool.name)}</name>"]
    if pool.spec.type == "logical":
        lines.append("  <source>")
        lines += [f"    <device path={quoted(device)}/>" for device in pool.spec.devices]
        lines += [
            f"    <name>{escaped(pool.volume_group)}</name>",
            "    <format type='lvm2'/>",
            "  </source>",
        ]
    lines += ["  <target>", f"    <path>{escaped(pool.target)}</path>", "  </target>", "</pool>"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PoolXMLFacts:
    """What a pool's XML says about its name, kind and place."""

    name: str
    type: str
    target: str  # normalised ("" when the XML has none)


def read_pool_xml(xml: str) -> PoolXMLFacts:
    """The name, type and target path of a pool's XML; :class:`DomainXMLError` when it is not pool XML."""
    root = _root(xml, "pool")
    target = root.findtext("target/path") or ""
    place = posixpath.normpath(target) if target else ""
    return PoolXMLFacts(root.findtext("name") or "", str(root.get("type", "")), place)


@dataclass(frozen=True)
class VolumeXMLFacts:
    """What a volume's XML says: its name and path, its sizes (bytes), its format and backing file."""

    name: str
    path: str
    capacity: int
    allocation: int
    format: str
    backing: str


def read_volume_xml(xml: str) -> VolumeXMLFacts:
    """The sizes, format and backing file of a volume's XML (libvirt's ``<volume>``)."""
    root = _root(xml, "volume")
    fmt = root.find("target/format")
    return VolumeXMLFacts(
        name=root.findtext("name") or "",
        path=root.findtext("target/path") or "",
        capacity=_size(root.find("capacity")),
        allocation=_size(root.find("allocation")),
        format=str(fmt.get("type", "")) if fmt is not None else "",
        backing=root.findtext("backingStore/path") or "",
    )


def _size(element: etree._Element | None) -> int:
    """A ``<capacity unit='bytes'>N</capacity>`` size in bytes: storage XML counts bytes unless it
    names another unit (0 when absent or unreadable: a size is a figure to show, never a key)."""
    text = (element.text or "").strip() if element is not None else ""
    if element is None or not text.isdigit():
        return 0
    unit = (element.get("unit") or "bytes").strip().lower()
    if unit in ("b", "bytes"):
        return int(text)
    try:
        return parse_libvirt_size(text, unit)
    except ValueError:
        return 0


def _root(xml: str, tag: str) -> etree._Element:
    """The parsed root of libvirt's XML, which must be ``tag``."""
    try:
        root = etree.fromstring(xml.encode(), _PARSER)
    except etree.XMLSyntaxError as err:
        raise DomainXMLError(f"{tag} XML is not well-formed: {err}") from err
    if root.tag != tag:
        raise DomainXMLError(f"expected <{tag}>, got <{root.tag}>")
    return root
