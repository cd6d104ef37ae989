"""Element-tree helpers shared by parsing and merging domain XML (lxml, no libvirt)."""

from __future__ import annotations

from lxml import etree

from reconciler.errors import DomainXMLError

_PARSER = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True)
_STEP = "  "  # one level of indentation, as libvirt writes it


def domain_root(xml: str) -> etree._Element:
    """The ``<domain>`` element of ``xml``; DomainXMLError when it is not well-formed or not a domain."""
    try:
        root = etree.fromstring(xml.encode(), _PARSER)
    except etree.XMLSyntaxError as err:
        raise DomainXMLError(f"not well-formed XML: {err}") from err
    if root.tag != "domain":
        raise DomainXMLError(f"expected a <domain> element, found <{root.tag}>")
    return root


def first_children(element: etree._Element) -> dict[str, etree._Element]:
    """The first child element of each tag (comments and processing instructions skipped)."""
    found: dict[str, etree._Element] = {}
    for child in element:
        tag = child.tag
        if isinstance(tag, str) and tag not in found:
            found[tag] = child
    return found


def text(element: etree._Element | None) -> str | None:
    """An element's text as ``findtext`` reads it: None when absent, "" when empty."""
    if element is None:
        return None
    return element.text or ""


def ensure(root: etree._Element, *path: str) -> etree._Element:
    """The element at ``path`` under root, each missing step appended as a new child."""
    element = root
    for tag in path:
        child = element.find(tag)
        element = child if child is not None else add_last(element, etree.Element(tag))
    return element


def insert_after(root: etree._Element, tag: str, after: str) -> etree._Element:
    """Find ``tag`` under root, or create it right after ``after`` (libvirt's canonical order)."""
    element = root.find(tag)
    if element is not None:
        return element
    anchor = root.find(after)
    if anchor is None:
        return add_last(root, etree.Element(tag))
    return add_after(anchor, etree.Element(tag))


# Whitespace: libvirt re-indents what it stores, but a merged definition should still read (and
# diff) like the original, so an added element takes the indentation of its neighbours and a
# removed one takes its own along.


def add_after(anchor: etree._Element, element: etree._Element) -> etree._Element:
    """Insert ``element`` as the next sibling of ``anchor``, indented like it."""
    anchor.addnext(element)
    element.tail = anchor.tail
    return _indented(element)


def add_first(parent: etree._Element, element: etree._Element) -> etree._Element:
    """Insert ``element`` as the first child of ``parent``, indented like the children."""
    if len(parent):
        element.tail = parent.text
        parent.insert(0, element)
        return _indented(element)
    return add_last(parent, element)


def add_last(parent: etree._Element, element: etree._Element) -> etree._Element:
    """Append ``element`` to ``parent``, indented like the last child (or one level below parent)."""
    if len(parent):
        previous = parent[-1]
        before = previous.getprevious()
        indent = before.tail if before is not None else parent.text
        if _blank(indent) and _blank(previous.tail):
            element.tail, previous.tail = previous.tail, indent
    elif _blank(parent.text):
        outer = parent.text or _whitespace_before(parent)
        if outer:
            element.tail, parent.text = outer, outer + _STEP
    parent.append(element)
    return _indented(element)


def remove(element: etree._Element) -> None:
    """Remove ``element`` (and its tail) from its parent, leaving the neighbours' indentation right."""
    parent = element.getparent()
    if parent is None:
        return
    previous = element.getprevious()
    if previous is not None:
        previous.tail = element.tail
    elif element.getnext() is None:
        parent.text = element.tail
    parent.remove(element)


def _whitespace_before(element: etree._Element) -> str | None:
    """The indentation in front of ``element`` (None when the document is not indented)."""
    previous, parent = element.getprevious(), element.getparent()
    before = previous.tail if previous is not None else parent.text if parent is not None else None
    return before if before and "\n" in before and _blank(before) else None


def _indented(element: etree._Element) -> etree._Element:
    """Indent a new element's descendants one step per level below ``element``'s own indentation."""
    outer = _whitespace_before(element)
    if outer is not None:
        _indent_children(element, outer)
    return element


def _indent_children(element: etree._Element, outer: str) -> None:
    if not len(element) or not _blank(element.text):
        return
    inner = outer + _STEP
    element.text = inner
    for child in element:
        _indent_children(child, inner)
        child.tail = inner
    element[-1].tail = outer


def _blank(value: str | None) -> bool:
    """Whether ``value`` is formatting only (None or whitespace)."""
    return value is None or not value.strip()


def drop(element: etree._Element, *attributes: str) -> None:
    """Remove attributes that may or may not be there."""
    for attribute in attributes:
        if attribute in element.attrib:
            del element.attrib[attribute]


def last(parent: etree._Element, *tags: str) -> etree._Element | None:
    """The last child of ``parent`` with the first of ``tags`` it has, if any."""
    for tag in tags:
        found = parent.findall(tag)
        if found:
            return found[-1]
    return None
