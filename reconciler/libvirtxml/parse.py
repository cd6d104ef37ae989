"""Domain XML -> :class:`ParsedDomain` (the modelled fields and our ownership metadata), memoised.

Parsing is pure, and a host's XML rarely changes between a daemon's passes, so parses are
remembered by their exact XML in this process (:func:`parse_domain`) and, within
:func:`cached_parses`, across processes through a :class:`ContentCache`. Being keyed by the exact
XML, the memo can also be filled ahead (:func:`parse_ahead`) with XML a host is expected to report:
a wrong guess costs its parse, never a wrong result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from lxml import etree

from reconciler.errors import DomainXMLError
from reconciler.files.content_cache import CacheRound, ContentCache, content_digest
from reconciler.libvirtxml.consoles import console_fields
from reconciler.libvirtxml.fields import (
    balloon_of,
    current_memory_of,
    disks_of,
    interfaces_of,
    kib,
    memory_of,
    vcpus_of,
)
from reconciler.libvirtxml.ownership import read_owner
from reconciler.libvirtxml.tree import domain_root, first_children, text
from reconciler.spec.disks import Disk
from reconciler.spec.models import Boot, DomainSpec, Owner
from reconciler.spec.storage import FROM_DEFINITION


@dataclass(frozen=True)
class ParsedDomain:
    """What the reconciler reads from a domain's XML."""

    name: str
    uuid: str | None
    spec: DomainSpec
    owner: Owner | None


#: Parsed domains by their exact XML: parsing is pure, and a host's XML rarely changes between a
#: daemon's passes (2,000 domains cost ~0.3 s to parse).
_PARSED: dict[str, ParsedDomain] = {}
_PARSED_LIMIT = 4096
_PARSED_LOCK = threading.Lock()
_NO_BOOT = Boot()


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


def read_usage(xml: str) -> tuple[int, int, int] | None:
    """vCPUs, maximum and current memory (bytes) of any domain XML, even one the model cannot read.

    The overcommit policy counts every domain on a host; None only when even these are missing.
    """
    try:
        root = domain_root(xml)
        memory = memory_of(root.find("memory"), root.findtext("name"))
        return vcpus_of(root.find("vcpu")), memory, current_memory_of(root.find("currentMemory"), memory)
    except (DomainXMLError, ValueError):
        return None


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
    scoped = cache.round(scope)  # a round of its own: other hosts' rounds may run meanwhile
    fresh = []
    for xml in xmls:
        digest = content_digest(xml)
        if not _recall(scoped, xml, digest):
            fresh.append((xml, digest))
    yield
    for xml, digest in fresh:
        if (done := _PARSED.get(xml)) is not None:
            scoped.put(digest, _cache_entry(done))
    scoped.finish()


def parse_ahead(xmls: Iterable[str]) -> None:
    """Parse into the memo XML that :func:`parse_domain` is about to be asked for (a host's domains,
    guessed while the host is still being opened), at most half of what the memo keeps. XML that
    cannot be read is skipped: whoever asks for it meets the error then."""
    for xml in islice(xmls, _PARSED_LIMIT // 2):
        if xml in _PARSED:
            continue
        try:
            parsed = _parse(xml)
        except (DomainXMLError, ValueError):
            continue
        _remember(xml, parsed)


def forget_parsed() -> None:
    """Empty the parsed-XML memo (benchmarks start each run as a new process would)."""
    with _PARSED_LOCK:  # a parse made ahead (another thread) may be adding to it
        _PARSED.clear()


def _recall(cache: CacheRound, xml: str, digest: str) -> bool:
    """Put the cached parse of ``xml`` in the memo; False when the block must parse it (and cache it)."""
    entry = cache.get(digest)
    if entry is None:
        return False
    if xml in _PARSED:
        return True
    try:
        parsed = _from_cache_entry(entry)
    except (ValueError, TypeError):
        cache.forget(digest)  # not what this code would have written: parse it again
        return False
    _remember(xml, parsed)
    return True


def _cache_entry(parsed: ParsedDomain) -> list[Any]:
    owner = parsed.owner.model_dump_json(by_alias=True) if parsed.owner is not None else None
    return [parsed.name, parsed.uuid, parsed.spec.model_dump_json(by_alias=True), owner]


def _from_cache_entry(entry: Any) -> ParsedDomain:
    name, uuid, spec, owner = entry
    if not isinstance(name, str) or not isinstance(uuid, str | None):
        raise TypeError("name and uuid must be strings")
    return ParsedDomain(
        name=name,
        uuid=uuid,
        spec=DomainSpec.model_validate_json(spec, context=FROM_DEFINITION),
        owner=Owner.model_validate_json(owner) if owner is not None else None,
    )


def _remember(xml: str, parsed: ParsedDomain) -> None:
    """Memo a parse; past the limit the oldest half goes (a huge host costs speed, never memory)."""
    with _PARSED_LOCK:
        if len(_PARSED) >= _PARSED_LIMIT:
            for old in list(islice(_PARSED, _PARSED_LIMIT // 2)):  # the oldest half
                del _PARSED[old]
        _PARSED[xml] = parsed


def _parse(xml: str) -> ParsedDomain:
    """Children are indexed by tag in one pass: a path lookup per field cost more than reading the XML."""
    root = domain_root(xml)
    top = first_children(root)
    name = text(top.get("name"))
    if not name:
        raise DomainXMLError("domain XML has no <name>")
    owner = read_owner(top.get("metadata"))
    fields = _spec_fields(root, top, name)
    fields["deletionProtection"] = owner is not None and owner.deletion_protection
    fields.update(console_fields(top.get("devices", ()), name, owner))
    if owner is not None and owner.delete_volumes:
        fields["disks"] = _marked_for_deletion(fields["disks"], owner.volumes_to_delete())
    try:
        spec = DomainSpec.model_validate(fields, context=FROM_DEFINITION)
    except (ValueError, TypeError) as err:
        raise DomainXMLError(f"domain {name!r}: {err}") from err
    return ParsedDomain(name=name, uuid=text(top.get("uuid")), spec=spec, owner=owner)


def _marked_for_deletion(disks: tuple[Disk, ...], doomed: frozenset[str]) -> tuple[Disk, ...]:
    """The disks with ``deleteVolumes`` set on those whose volume the ownership says goes with the
    domain (libvirt's disk element has no room for it)."""
    return tuple(
        disk.model_copy(update={"delete_volumes": True})
        if disk.volume is not None and disk.volume.key in doomed
        else disk
        for disk in disks
    )


def _spec_fields(root: etree._Element, top: dict[str, etree._Element], name: str) -> dict[str, Any]:
    """The DomainSpec fields of a domain, from its root and first children by tag."""
    os_parts = first_children(top["os"]) if "os" in top else {}
    os_type = os_parts.get("type")
    memory = memory_of(top.get("memory"), name)
    devices = top.get("devices")
    disks, nics, balloon = [], [], None
    for device in devices if devices is not None else ():
        if device.tag == "disk":
            disks.append(device)
        elif device.tag == "interface":
            nics.append(device)
        elif device.tag == "memballoon" and balloon is None:
            balloon = device
    kernel, initrd, cmdline = (text(os_parts.get(tag)) for tag in ("kernel", "initrd", "cmdline"))
    return {
        "vcpus": vcpus_of(top.get("vcpu")),
        "memory": kib(memory),
        "currentMemory": kib(current_memory_of(top.get("currentMemory"), memory)),
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
        "disks": tuple(disk for _, disk in disks_of(disks)),
        "interfaces": tuple(nic for _, nic in interfaces_of(nics)),
        "balloon": balloon_of(balloon),
    }
