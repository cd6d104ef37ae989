"""Our ownership record in a domain's ``<metadata>``: which manifest, revision and spec hash wrote it.

libvirt keeps one element per namespace in ``<metadata>``; ours lives in :data:`OWNER_NS` and sits
beside whatever other tools put there, which is never touched.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from lxml import etree

from reconciler.libvirtxml.tree import add_last, insert_after
from reconciler.spec.models import Owner

OWNER_NS = "https://virt-reconcile.dev/xmlns/owner/v1"
OWNER_PREFIX = "vr"
OWNER_TAG = f"{{{OWNER_NS}}}owner"


def read_owner(metadata: etree._Element | None) -> Owner | None:
    """The owner recorded under a domain's ``<metadata>`` element (None: not ours, or no metadata)."""
    element = metadata.find(OWNER_TAG) if metadata is not None else None
    if element is None:
        return None
    return Owner(
        manifest=element.get("manifest", ""),
        revision=element.get("revision", ""),
        spec_hash=element.get("specHash", ""),
    )


def write_owner(root: etree._Element, owner: Owner) -> None:
    """Set our owner element in the domain's ``<metadata>``, creating either where libvirt puts them."""
    metadata = insert_after(root, "metadata", "uuid" if root.find("uuid") is not None else "name")
    element = metadata.find(OWNER_TAG)
    if element is None:
        element = add_last(metadata, etree.Element(OWNER_TAG, nsmap={OWNER_PREFIX: OWNER_NS}))
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
