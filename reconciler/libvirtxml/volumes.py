"""The XML that makes a disk's volume in its pool (pure): libvirt's ``<volume>`` for
``storagePool.createXML`` (an empty image or a qcow2 overlay) and ``createXMLFrom`` (a copy).

Sizes are written in bytes, as the plan computed them. ``allocation`` is what the pool sets aside at
once: the whole size for a raw LVM volume (a smaller one would be a thin LVM snapshot), nothing for
a file, which stays sparse (qcow2 grows as the guest writes; raw leaves holes).
"""

from __future__ import annotations

from reconciler.libvirtxml.xmltext import escaped, quoted

#: qcow2 version 3 (QEMU 1.1 on): zero clusters and lazy refcounts; libvirt's default is the old v2.
_COMPAT = "<compat>1.1</compat>"


def render_volume(
    name: str, capacity: int, fmt: str, *, allocation: int = 0, backing: tuple[str, str] | None = None
) -> str:
    """A ``<volume>`` named ``name`` of ``capacity`` bytes in format ``fmt``; ``backing`` is the base
    image's (path, format) for an overlay."""
    lines = [
        "<volume>",
        f"  <name>{escaped(name)}</name>",
        f"  <capacity unit='bytes'>{capacity}</capacity>",
        f"  <allocation unit='bytes'>{allocation}</allocation>",
        f"  <target><format type={quoted(fmt)}/>{_COMPAT if fmt == 'qcow2' else ''}</target>",
    ]
    if backing is not None:
        path, base_format = backing
        lines.append(
            f"  <backingStore><path>{escaped(path)}</path><format type={quoted(base_format)}/></backingStore>"
        )
    lines.append("</volume>")
    return "\n".join(lines) + "\n"
