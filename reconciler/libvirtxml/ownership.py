"""Our ownership record in a domain's ``<metadata>``: which manifest, revision and spec hash wrote it,
and a restart the written definition waits for.

libvirt keeps one element per namespace in ``<metadata>``; ours lives in :data:`OWNER_NS` and sits
beside whatever other tools put there, which is never touched.
"""

from __future__ import annotations

import hashlib
import json

from lxml import etree

from reconciler.libvirtxml.tree import add_last, domain_root, insert_after
from reconciler.libvirtxml.xmltext import quoted
from reconciler.spec.models import Owner

OWNER_NS = "https://virt-reconcile.dev/xmlns/owner/v1"
OWNER_PREFIX = "vr"
OWNER_TAG = f"{{{OWNER_NS}}}owner"


#: Owner fields as XML attributes, in the order they are written; booleans only when true.
_ATTRIBUTES = (
    ("manifest", "manifest"),
    ("revision", "revision"),
    ("spec_hash", "specHash"),
    ("root", "root"),
    ("host", "host"),
    ("deletion_protection", "deletionProtection"),
    ("pending", "pending"),
    ("pending_until", "pendingUntil"),
    ("restart_instance", "restartInstance"),
    ("restart_waits", "restartWaits"),
    ("off_on_purpose", "offOnPurpose"),
    ("delete_volumes", "deleteVolumes"),
    ("seed", "seed"),
    ("graphics_password_file", "graphicsPasswordFile"),
)
#: The longest domain id read back from ``restartInstance`` (libvirt's ids are C ints).
_MAX_ID_DIGITS = 10


def _attributes(owner: Owner) -> list[tuple[str, str]]:
    """The owner's XML attributes: strings as they are (empty ones left out, but for the first
    three, which every owner element carries), booleans as ``true`` when set, a domain id when
    one is recorded (not negative)."""
    out = []
    for field, attribute in _ATTRIBUTES:
        value = getattr(owner, field)
        if isinstance(value, bool):
            if value:
                out.append((attribute, "true"))
        elif isinstance(value, int):
            if value >= 0:
                out.append((attribute, str(value)))
        elif value or attribute in ("manifest", "revision", "specHash"):
            out.append((attribute, value))
    return out


def read_owner(metadata: etree._Element | None) -> Owner | None:
    """The owner recorded under a domain's ``<metadata>`` element (None: not ours, or no metadata)."""
    element = metadata.find(OWNER_TAG) if metadata is not None else None
    if element is None:
        return None
    values: dict[str, str | bool | int] = {}
    for field, attribute in _ATTRIBUTES:
        text = element.get(attribute)
        if field in ("deletion_protection", "pending"):
            values[field] = text == "true"
        elif field == "restart_instance":  # anything but a plain id reads as no mark
            digits = text is not None and text.isascii() and text.isdigit() and len(text) <= _MAX_ID_DIGITS
            values[field] = int(text) if digits and text is not None else -1
        else:
            values[field] = text or ""
    return Owner.model_validate(values)


#: Owner fields no definition is told by: the restart mark's domain id (ids repeat after a libvirtd
#: restart or a reboot) and what metadata-only writes change (import's pending mark, offOnPurpose,
#: a reseed's seed digest).
_NOT_THE_DEFINITION = frozenset({"restart_instance", "pending", "pending_until", "off_on_purpose", "seed"})
#: The attribute a restart mark sets: its text in a domain's XML makes the mark worth parsing.
RESTART_MARK_ATTRIBUTE = "restartInstance="


def definition_key(owner: Owner | None) -> str:
    """A short digest of what a redefine wrote into an ownership element (revision, spec hash, the
    restart mark's text ...): a running instance whose live XML gives the key of the persistent XML
    runs that definition. "" for no ownership (a domain started before it was adopted)."""
    if owner is None:
        return ""
    written = owner.model_dump(mode="json", exclude=set(_NOT_THE_DEFINITION))
    return hashlib.sha256(json.dumps(written, sort_keys=True).encode()).hexdigest()[:16]


def running_definition(live_xml: str) -> str:
    """The :func:`definition_key` of a running domain's live XML (libvirt's ``XMLDesc(0)``), which
    keeps the ownership of the definition the instance was started from."""
    return definition_key(read_owner(domain_root(live_xml).find("metadata")))


def write_owner(root: etree._Element, owner: Owner) -> None:
    """Set our owner element in the domain's ``<metadata>``, creating either where libvirt puts them."""
    metadata = insert_after(root, "metadata", "uuid" if root.find("uuid") is not None else "name")
    element = metadata.find(OWNER_TAG)
    if element is None:
        element = add_last(metadata, etree.Element(OWNER_TAG, nsmap={OWNER_PREFIX: OWNER_NS}))
    for _, attribute in _ATTRIBUTES:
        if attribute in element.attrib:
            del element.attrib[attribute]
    for attribute, value in _attributes(owner):
        element.set(attribute, value)


def marked_pending(xml: str) -> str:
    """A managed domain's XML with its ownership marked pending (as an import marks it): restored
    from a backup, it is not pruned again before a revision that holds it is applied. XML of an
    unmanaged domain comes back unchanged."""
    root = domain_root(xml)
    metadata = root.find("metadata")
    owner = read_owner(metadata)
    if owner is None:
        return xml
    write_owner(root, owner.model_copy(update={"pending": True}))
    return etree.tostring(root, encoding="unicode")


def owner_metadata(owner: Owner) -> str:
    """The ownership element for libvirt's metadata call, which adds our namespace itself."""
    attributes = " ".join(f"{name}={quoted(value)}" for name, value in _attributes(owner))
    return f"<owner {attributes}/>"


def owner_xml(owner: Owner) -> str:
    """The ownership element alone: for a new domain's XML and libvirt's metadata call (import)."""
    attributes = " ".join(f"{name}={quoted(value)}" for name, value in _attributes(owner))
    return f"<{OWNER_PREFIX}:owner xmlns:{OWNER_PREFIX}={quoted(OWNER_NS)} {attributes}/>"
