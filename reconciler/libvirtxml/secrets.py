"""Values libvirt shows only to a secure read (``VIR_DOMAIN_XML_SECURE``): they stay on the host.

Domains are observed without the secure flag, so a VNC or SPICE password never reaches a plan, a
saved plan, a snapshot or an imported manifest. An update redefines a domain from that observed
XML, which would drop the password: :func:`keep_secrets` puts the secure-only values of the current
definition (read securely just before the define) back into the new XML.

The secure-only values libvirt writes into domain XML, and how each is found again in the new XML:

* ``passwd`` of ``<graphics>`` (VNC, SPICE, RDP; ``passwdValidTo`` comes with it): matched by the
  graphics type and its position among the graphics of that type;
* ``<cookies>`` of a network disk's ``<source>``: matched by the disk's target and the same source.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict

from lxml import etree

from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.tree import add_last, domain_root

#: Attributes of ``<graphics>`` kept from the current definition; the first is the secret itself.
GRAPHICS_SECRETS = ("passwd", "passwdValidTo")


#: The start of domain XML as libvirt and this package write it: the ``<domain>`` start tag (no
#: default namespace, no ``<`` or ``>`` in its attribute values), then ``<name>`` as its first child,
#: holding plain text (no entity, no CDATA, no carriage return, which a parser would rewrite).
_PLAIN_START = re.compile(
    r"[ \t\r\n]*<domain(?:[ \t\r\n]+(?!xmlns[ \t\r\n]*=)[A-Za-z_][A-Za-z0-9_.:-]*[ \t\r\n]*=[ \t\r\n]*"
    r"(?:\"[^\"<>]*\"|'[^'<>]*'))*[ \t\r\n]*>[ \t\r\n]*<name>([^<&\r]*)</name>"
)


def defined_name(xml: str) -> str | None:
    """The domain name ``xml`` defines; None when it is not readable domain XML (libvirt says why)."""
    try:
        return domain_root(xml).findtext("name") or None
    except DomainXMLError:
        return None


def leading_name(xml: str) -> str | None:
    """The name at the start of domain XML, read as :func:`defined_name` reads it but without parsing
    the document when it starts as libvirt writes it (a define of thousands of domains parsed each
    one only for its name). The rest of the text is not checked: libvirt checks it on the define."""
    plain = _PLAIN_START.match(xml)
    if plain is not None:
        return plain.group(1) or None
    return defined_name(xml)


def keep_secrets(new_xml: str, secure_xml: str) -> str:
    """``new_xml`` with the secure-only values of ``secure_xml`` (the current definition, read with
    the secure flag) put back, wherever ``new_xml`` does not set its own.

    ``new_xml`` is returned unchanged, text and all, when there is nothing to put back.
    """
    current = domain_root(secure_xml)
    if not _holds_secrets(current):
        return new_xml
    new = domain_root(new_xml)
    kept = _keep_graphics_passwords(new, current)
    kept = _keep_disk_cookies(new, current) or kept
    return etree.tostring(new, encoding="unicode") if kept else new_xml


def _holds_secrets(root: etree._Element) -> bool:
    """Whether the definition has any secure-only value at all (the common case: none)."""
    return any(g.get("passwd") is not None for g in root.iterfind("devices/graphics")) or (
        root.find("devices/disk/source/cookies") is not None
    )


def _graphics_by_type(root: etree._Element) -> dict[str, list[etree._Element]]:
    """Each graphics type's ``<graphics>`` elements, in document order."""
    found: dict[str, list[etree._Element]] = defaultdict(list)
    for graphics in root.iterfind("devices/graphics"):
        found[graphics.get("type", "")].append(graphics)
    return found


def _keep_graphics_passwords(new: etree._Element, current: etree._Element) -> bool:
    """Copy each graphics password (and its expiry) to the new graphics of the same type and rank."""
    kept = False
    olds = _graphics_by_type(current)
    for kind, graphics in _graphics_by_type(new).items():
        for element, old in zip(graphics, olds.get(kind, []), strict=False):
            secret = old.get(GRAPHICS_SECRETS[0])
            if secret is None or element.get(GRAPHICS_SECRETS[0]) is not None:
                continue  # nothing to keep, or the new XML sets its own password
            for attribute in GRAPHICS_SECRETS:
                value = old.get(attribute)
                if value is not None and element.get(attribute) is None:
                    element.set(attribute, value)
            kept = True
    return kept


def _source_identity(source: etree._Element) -> tuple[str | None, str | None]:
    return source.get("protocol"), source.get("name")


def _keep_disk_cookies(new: etree._Element, current: etree._Element) -> bool:
    """Copy a network disk's cookies to the new disk of the same target with the same source."""
    cookies: dict[str, tuple[tuple[str | None, str | None], etree._Element]] = {}
    for disk in current.iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        found = source.find("cookies") if source is not None else None
        if source is not None and found is not None and target is not None and target.get("dev"):
            cookies[target.get("dev", "")] = (_source_identity(source), found)
    kept = False
    for disk in new.iterfind("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if source is None or target is None or source.find("cookies") is not None:
            continue
        identity, old = cookies.get(target.get("dev", ""), (None, None))
        if old is not None and identity == _source_identity(source):
            cookie_jar = copy.deepcopy(old)
            cookie_jar.tail = None
            add_last(source, cookie_jar)
            kept = True
    return kept
