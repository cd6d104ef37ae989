"""The devices people reach a domain through, and its cloud-init seed cdrom: read, rendered, merged.

Only what the model describes is touched:

* graphics: the first ``<graphics>`` of type vnc or spice (type, listen address, port); its other
  attributes and children (keymap, channels...) are kept, and other graphics types are left alone.
  The password is never written here: the adapter sets it from ``passwordFile`` when it sends the
  definition, and ``passwordFile`` itself lives in our ownership metadata;
* serial: the ``<serial type='pty'>`` ports and the ``<console type='pty'>`` on them (a pty console
  alone counts: libvirt adds its serial port; a virtio console and serial ports of other types are
  left alone);
* the seed: a read-only cdrom ``<disk type='volume' device='cdrom'>`` whose source is the volume
  ``<domain>-cidata.iso`` of a pool, on the bus the machine type has (ide for i440fx ``pc``, sata for
  q35, scsi elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lxml import etree

from reconciler.libvirtxml.ownership import read_owner
from reconciler.libvirtxml.tree import domain_root
from reconciler.libvirtxml.xmltext import quoted
from reconciler.spec.cloudinit import CloudInit, seed_volume_name
from reconciler.spec.consoles import Graphics
from reconciler.spec.models import DomainSpec, Owner

MODELLED_GRAPHICS = ("vnc", "spice")
_X86 = ("x86_64", "i686")
SEED_BUS_PREFIX = {"ide": "hd", "sata": "sd", "scsi": "sd"}
#: Text found in a definition whose ownership names a graphics password file (checked before parsing).
PASSWORD_FILE_MARK = "graphicsPasswordFile="


# ----------------------------------------------------------------------------------------- read


def console_fields(devices: Iterable[etree._Element], name: str, owner: Owner | None) -> dict[str, Any]:
    """The DomainSpec fields this module models (``cloudInit``, ``graphics``, ``serial``), read
    from a domain's devices; the seed and the password file only on a domain we manage."""
    graphics = seed = None
    serial = False
    for device in devices:
        tag = device.tag
        if tag == "graphics" and graphics is None and device.get("type") in MODELLED_GRAPHICS:
            graphics = device
        elif tag in ("serial", "console") and device.get("type") == "pty" and on_serial(device):
            serial = True  # a pty console alone: libvirt adds the serial port it stands for
        elif tag == "disk" and seed is None and owner is not None and is_seed(device, name):
            seed = device
    source = seed.find("source") if seed is not None else None
    return {
        "cloudInit": CloudInit(pool=source.get("pool")) if source is not None else None,
        "graphics": graphics_of(graphics, owner.graphics_password_file if owner else "")
        if graphics is not None
        else None,
        "serial": serial,
    }


def on_serial(device: etree._Element) -> bool:
    """Whether a ``<serial>``, or a ``<console>`` on a serial port (not a virtio console), is one."""
    if device.tag == "serial":
        return True
    target = device.find("target")
    return target is None or target.get("type", "serial") == "serial"


def graphics_of(element: etree._Element, password_file: str) -> Graphics | None:
    """The model of a ``<graphics>`` element; None when it listens on no address (a socket, a
    network name), which the model cannot express."""
    listen = _listen_address(element)
    if listen is None:
        return None
    port: int | str = "auto"
    if element.get("autoport", "no") != "yes":
        number = element.get("port", "")
        port = int(number) if number.isdigit() else "auto"
    try:
        return Graphics.model_validate(
            {
                "type": element.get("type"),
                "listen": listen,
                "port": port,
                "passwordFile": password_file or None,
            }
        )
    except ValueError:
        return None


def _listen_address(element: etree._Element) -> str | None:
    listen = element.find("listen")
    if listen is not None:
        return listen.get("address") if listen.get("type") == "address" else None
    return element.get("listen")


def is_seed(disk: etree._Element, name: str) -> bool:
    """Whether a ``<disk>`` is the domain's seed cdrom (a volume named after the domain)."""
    if disk.get("device") != "cdrom" or disk.get("type") != "volume":
        return False
    source = disk.find("source")
    return source is not None and bool(source.get("pool")) and source.get("volume") == seed_volume_name(name)


# --------------------------------------------------------------------------------------- render


def console_xml(name: str, spec: DomainSpec) -> list[str]:
    """The ``<devices>`` lines of a new domain for its seed cdrom, graphics and serial console."""
    lines = []
    if spec.cloud_init is not None and spec.cloud_init.pool is not None:
        lines.append("    " + seed_xml(name, spec.cloud_init.pool, spec))
    if spec.graphics is not None:
        lines.append("    " + graphics_xml(spec.graphics))
    if spec.serial is not False:  # left out: a new domain gets a console anyway
        lines += ["    <serial type='pty'/>", "    <console type='pty'/>"]
    return lines


def as_defined(spec: DomainSpec) -> DomainSpec:
    """The spec of a new domain as its definition reads back: with a serial console unless the
    manifest says ``serial: false`` (left out, it means "leave an existing domain's alone")."""
    return spec if spec.serial is not None else spec.model_copy(update={"serial": True})


def graphics_xml(graphics: Graphics) -> str:
    """A ``<graphics>`` element (without a password: see the module's docstring)."""
    if graphics.port == "auto":
        port = "port='-1' autoport='yes'"
    else:
        port = f"port={quoted(str(graphics.port))} autoport='no'"
    listen = quoted(graphics.listen)
    return (
        f"<graphics type={quoted(graphics.type)} {port} listen={listen}>"
        f"<listen type='address' address={listen}/></graphics>"
    )


def seed_bus(spec: DomainSpec) -> str:
    """The bus of the seed cdrom: ide on i440fx (x86's default ``pc``), sata on q35, else scsi."""
    if spec.arch not in _X86:
        return "scsi"
    return "sata" if "q35" in (spec.machine or "pc") else "ide"


def seed_target(spec: DomainSpec, bus: str) -> str:
    """The first device name of ``bus`` that no disk of ``spec`` uses (hda, sda, sdb...)."""
    taken = {disk.target for disk in spec.disks}
    prefix = SEED_BUS_PREFIX[bus]
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if prefix + letter not in taken:
            return prefix + letter
    return prefix + "zz"  # 26 disks on one prefix: libvirt says what is wrong


def seed_xml(name: str, pool: str, spec: DomainSpec) -> str:
    """The seed's read-only cdrom: the volume ``<name>-cidata.iso`` of ``pool``."""
    bus = seed_bus(spec)
    return (
        "<disk type='volume' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source pool={quoted(pool)} volume={quoted(seed_volume_name(name))}/>"
        f"<target dev={quoted(seed_target(spec, bus))} bus={quoted(bus)}/><readonly/></disk>"
    )


# ------------------------------------------------------------------------------------- password


def _modelled_graphics(root: etree._Element) -> etree._Element | None:
    return next((g for g in root.iterfind("devices/graphics") if g.get("type") in MODELLED_GRAPHICS), None)


def password_file_of(xml: str) -> tuple[str, str] | None:
    """The graphics type and ``passwordFile`` a definition's ownership names for its modelled
    graphics; None when it names none or has no such graphics."""
    root = domain_root(xml)
    owner = read_owner(root.find("metadata"))
    graphics = _modelled_graphics(root)
    if owner is None or not owner.graphics_password_file or graphics is None:
        return None
    return graphics.get("type", ""), owner.graphics_password_file


def with_graphics_password(xml: str, password: str) -> str:
    """``xml`` with ``password`` set on its modelled graphics: only ever sent to libvirt, never
    kept (an observed definition leaves it out: libvirt shows it to a secure read only)."""
    root = domain_root(xml)
    graphics = _modelled_graphics(root)
    if graphics is None:
        return xml
    graphics.set("passwd", password)
    return etree.tostring(root, encoding="unicode")
