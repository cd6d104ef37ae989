"""The sandbox host's state file: libvirt test-driver node XML, locked for apply, written atomically.

A ``sandbox:PATH`` host is libvirt's own test driver loaded from PATH. The file is the test
driver's ``<node>`` format (``<cpu>``, ``<memory>``, inline ``<domain>`` elements with their run
state in ``test:runstate``), so people and tests can seed it by hand. The test driver has no
autostart in that format, so autostart flags are kept beside the domains in our own namespace, as
are the running domains' instance ids (:class:`InstanceIds`).
This module handles files and XML only; the libvirt adapter (``adapters.libvirt.host``) drives libvirt.

Loading a large file takes libvirt a while (some 0.2 ms a domain, with Python's lock released), and
the plan then parses every domain's XML; the file already holds that XML, so it is parsed ahead in
a thread of its own meanwhile (:func:`reported_xmls`).
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lxml import etree

from reconciler.adapters.libvirt import hostlock
from reconciler.adapters.libvirt.lockholders import LockLimits
from reconciler.errors import PermanentHostError
from reconciler.files.atomic import write_atomically
from reconciler.libvirtxml.parse import parse_ahead
from reconciler.libvirtxml.xmltext import quoted
from reconciler.spec.sizes import KIB, parse_size

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
SANDBOX_NS = "https://virt-reconcile.dev/xmlns/sandbox/v1"
DEFAULT_CPUS = 8
DEFAULT_MEMORY = parse_size("16GiB")
#: virDomainState values the test driver's runstate takes.
RUNNING, SHUTOFF = 1, 5
#: The most a state file may hold: 2,000 domains take some 6 MiB. A larger file (or a device that
#: never ends) is refused before it is read, rather than read until memory runs out.
MAX_STATE_BYTES = 64 * 1024**2


#: A state file holding at least this many domains has them parsed ahead while libvirt loads it;
#: for fewer, starting a thread costs about what the parsing would save.
PARSE_AHEAD_MIN_DOMAINS = 64
_PARSE_AHEAD_DELAY = 0.01  # seconds: see _parse_ahead
#: How :func:`compose_node_xml` ends a domain: our run state line, then the end tag.
_WRITTEN_END = re.compile(
    rf"  <test:runstate xmlns:test='{re.escape(TEST_NS)}'>\d+</test:runstate>\n</domain>(?:\n|\Z)"
)

#: Checks a state file without taking anything from outside it (no DTD, no entities, no network).
#: Blank text is dropped: only the structure is read, and a tree without it builds faster.
_CHECKING_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=True
)


@dataclass(frozen=True)
class SandboxDomain:
    """One domain to persist: persistent XML, whether it runs, whether it autostarts."""

    xml: str
    active: bool
    autostart: bool
    instance: int = -1  # the running instance's id (InstanceIds), -1 when off or not known
    definition: str | None = None  # what it runs, when restart-marked (InstanceIds.definition)


@dataclass(frozen=True)
class SandboxPool:
    """One storage pool to persist: its ``<pool>`` element (its ``<volume>`` elements inside, where
    the test driver reads them from), whether it runs, whether it autostarts."""

    name: str
    xml: str
    active: bool
    autostart: bool


#: Beside the pools, in our namespace: the test driver starts every pool it loads, and keeps no
#: autostart flag for pools in this format.
_POOL_MARKS = ("pool-inactive", "pool-autostart")


def pool_marks(node_xml: str) -> tuple[set[str], set[str]]:
    """The pools a sandbox node file keeps inactive, and those it keeps autostarted (a file naming
    neither mark is not parsed again: a search of its text is a fraction of a 2,000-domain parse)."""
    if not any(tag in node_xml for tag in _POOL_MARKS):
        return set(), set()
    root = etree.fromstring(node_xml.encode(), _CHECKING_PARSER)
    inactive, autostart = (
        {el.get("pool", "") for el in root.iterfind(f"{{{SANDBOX_NS}}}{tag}")} for tag in _POOL_MARKS
    )
    return inactive, autostart


class InstanceIds:
    """The running domains' instance ids, kept in the state file across loads.

    The test driver numbers running domains 1, 2, ... at every load, so its own ids would make a
    restarted domain the same instance as before. Here an id is given at each start from a counter
    that never goes back, and kept while the domain runs (one running when the file was seeded by
    hand gets the next id when first asked). A reload also makes the test driver forget the live
    definition a domain was started from, so its ownership key (``definition_key``) is kept too,
    for restart-marked domains: a real libvirtd keeps it across its own restarts.
    """

    def __init__(
        self, ids: dict[str, int] | None = None, next_id: int = 1, definitions: dict[str, str] | None = None
    ) -> None:
        self._ids = dict(ids or {})
        self._definitions = dict(definitions or {})  # as loaded; dropped at the domain's next start
        self.next_id = max(next_id, max(self._ids.values(), default=0) + 1)
        self._lock = threading.Lock()  # starts run side by side

    def of(self, name: str, active: bool) -> int:
        """The id of ``name``'s running instance (-1 when it is off)."""
        if not active:
            return -1
        with self._lock:
            if name not in self._ids:
                self._take(name)
            return self._ids[name]

    def started(self, name: str) -> None:
        """``name`` was started: a new instance, with a new id, running its persistent definition."""
        with self._lock:
            self._take(name)
            self._definitions.pop(name, None)

    def definition(self, name: str) -> str | None:
        """What running ``name`` was started from, as the file kept it; None: not kept, or
        started since the load (the test driver's live XML tells then)."""
        return self._definitions.get(name)

    def _take(self, name: str) -> None:
        self._ids[name] = self.next_id
        self.next_id += 1


def new_node_xml(cpus: int | None, memory: int | None) -> str:
    """A fresh, empty sandbox node with the given capacity (defaults: 8 CPUs, 16 GiB)."""
    cpus = cpus or DEFAULT_CPUS
    memory_kib = (memory or DEFAULT_MEMORY) // KIB
    return (
        "<node>\n"
        "  <cpu>\n"
        f"    <nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>\n"
        f"    <active>{cpus}</active><mhz>2000</mhz><model>x86_64</model>\n"
        "  </cpu>\n"
        f"  <memory>{memory_kib}</memory>\n"
        "</node>\n"
    )


#: The state file text :meth:`SandboxFile.read` checked last, with the autostart names and instance
#: ids it holds, until :func:`node_marks` takes them: the host is opened from that very text at once,
#: and parsing thousands of domains again would cost some 20 ms. Handed over once: a long-running
#: process keeps at most one state file's text, and only until the host is opened from it.
_JUST_READ: list[tuple[str, set[str], InstanceIds]] = []
_OUR_ELEMENTS = ("autostart", "running", "instances")  # what compose_node_xml writes beside domains


def node_marks(node_xml: str) -> tuple[set[str], InstanceIds]:
    """The names of the domains marked autostart in a sandbox node file, and its instance ids."""
    try:
        text, names, ids = _JUST_READ.pop()  # atomic: another thread's read is never taken twice
    except IndexError:
        text, names, ids = "", set(), InstanceIds()
    if text is node_xml:
        return names, ids
    root = etree.fromstring(node_xml.encode(), _CHECKING_PARSER)
    return _autostart_in(root), _instances_in(root)


def autostart_names(node_xml: str) -> set[str]:
    """Names of the domains marked autostart in a sandbox node file."""
    return node_marks(node_xml)[0]


def _autostart_in(root: etree._Element) -> set[str]:
    """The autostart names under a parsed ``<node>``."""
    return {el.get("domain", "") for el in root.iterfind(f"{{{SANDBOX_NS}}}autostart")}


def _instances_in(root: etree._Element) -> InstanceIds:
    """The instance ids under a parsed ``<node>`` (a value that is not a number is left out)."""
    running = list(root.iterfind(f"{{{SANDBOX_NS}}}running"))
    ids = {
        el.get("domain", ""): int(el.get("instance", ""))
        for el in running
        if el.get("instance", "").isdigit()
    }
    definitions = {
        el.get("domain", ""): el.get("definition", "") for el in running if "definition" in el.attrib
    }
    counter = root.find(f"{{{SANDBOX_NS}}}instances")
    text = counter.get("next", "") if counter is not None else ""
    return InstanceIds(ids, int(text) if text.isdigit() else 1, definitions)


def compose_node_xml(
    previous: str,
    domains: list[SandboxDomain],
    next_instance: int = 1,
    pools: list[SandboxPool] | None = None,
) -> str:
    """The node file for ``domains``, keeping everything else of ``previous`` (cpu, memory, networks);
    ``next_instance`` is the id the next start takes (see :class:`InstanceIds`).

    Domains are spliced in as text: libvirt's own XML goes in unchanged, and saving thousands of
    domains costs no XML parsing. ``pools`` (None: those of ``previous`` kept as they are) replace
    the storage pools, with their volumes and flags.
    """
    root = etree.fromstring(previous.encode(), etree.XMLParser(remove_blank_text=True))
    ours = [element for tag in _OUR_ELEMENTS for element in root.findall(f"{{{SANDBOX_NS}}}{tag}")]
    if pools is not None:
        marks = [f"{{{SANDBOX_NS}}}{mark}" for mark in _POOL_MARKS]
        ours += [element for tag in ("pool", *marks) for element in root.findall(tag)]
    for element in root.findall("domain") + ours:
        root.remove(element)
    etree.indent(root, space="  ")
    skeleton = etree.tostring(root, encoding="unicode")
    head, _, tail = skeleton.rpartition("</node>")
    if not _:
        head, tail = skeleton.removesuffix("/>") + ">", ""  # an empty <node/>
    parts = [head.rstrip(), "\n", *(_pool_text(pool) for pool in pools or ())]
    for domain in domains:
        body, _, _rest = domain.xml.rstrip().rpartition("</domain>")
        state = RUNNING if domain.active else SHUTOFF
        parts.append(f"{body}  <test:runstate xmlns:test='{TEST_NS}'>{state}</test:runstate>\n</domain>\n")
    parts.extend(
        f"<sandbox:autostart xmlns:sandbox='{SANDBOX_NS}' domain={quoted(_domain_name(d.xml))}/>\n"
        for d in domains
        if d.autostart
    )
    parts.extend(
        f"<sandbox:running xmlns:sandbox='{SANDBOX_NS}' domain={quoted(_domain_name(d.xml))} "
        f"instance='{d.instance}'"
        + ("" if d.definition is None else f" definition={quoted(d.definition)}")
        + "/>\n"
        for d in domains
        if d.active and d.instance >= 0
    )
    if next_instance > 1:
        parts.append(f"<sandbox:instances xmlns:sandbox='{SANDBOX_NS}' next='{next_instance}'/>\n")
    parts.append("</node>" + tail.rstrip() + "\n")
    return "".join(parts)


def _pool_text(pool: SandboxPool) -> str:
    """A pool's element, then the marks the test driver would not keep (inactive, autostart)."""
    marks = [tag for tag, on in zip(_POOL_MARKS, (not pool.active, pool.autostart), strict=True) if on]
    name = quoted(pool.name)
    flags = "".join(f"<sandbox:{tag} xmlns:sandbox='{SANDBOX_NS}' pool={name}/>\n" for tag in marks)
    return f"{pool.xml.rstrip()}\n{flags}"


def reported_xmls(node_xml: str) -> list[str]:
    """The XML libvirt will report for each domain of a state file :func:`compose_node_xml` wrote,
    read off the file: libvirt formats a definition it loaded exactly as it formatted it before the
    save, so taking our run state line out gives it back. It is a guess: a domain with a password
    (written with it, reported without) or a file edited by hand gives XML libvirt never reports."""
    found = []
    for written in node_xml.split("\n<domain")[1:]:  # each domain starts a line
        end = _WRITTEN_END.search(written)
        if end is not None:
            found.append("<domain" + written[: end.start()] + "</domain>\n")
    return found


def _parse_ahead(node_xml: str) -> None:
    """Parse the domains of a state file in a thread of its own, while libvirt loads the same file:
    the plan then finds each parse made (see :func:`reconciler.libvirtxml.parse.parse_ahead`).

    The thread first leaves Python's lock to the thread that read the file, which needs it for
    about a millisecond more before libvirt takes the file and lets go of the lock for the whole
    load; taking turns with it before that would only delay the load."""

    def run() -> None:
        time.sleep(_PARSE_AHEAD_DELAY)
        parse_ahead(reported_xmls(node_xml))

    threading.Thread(target=run, name="vr-sandbox-parse").start()  # ends by itself, soon


def _domain_name(xml: str) -> str:
    """A domain's name from libvirt's XML, without parsing the whole document."""
    start = xml.index("<name>") + len("<name>")
    name = xml[start : xml.index("</name>", start)]
    if "&" not in name:
        return name
    from xml.sax.saxutils import unescape  # rare: a name with markup characters

    return unescape(name)


def _read_bounded(stream: BinaryIO, size: int) -> bytes:
    """A regular file of ``size`` bytes (as ``fstat`` saw it), read in one go; a file that grew since
    is read on, up to one byte past :data:`MAX_STATE_BYTES` (the caller refuses it). Asking for the
    whole limit at once would make Python set aside 64 MiB for every read."""
    content = stream.read(size + 1)
    if len(content) > size:
        content += stream.read(MAX_STATE_BYTES + 1 - len(content))
    return content


class SandboxFile:
    """A sandbox state file held under an exclusive (write) or shared (read) lock."""

    def __init__(self, path: Path, host: str | None = None) -> None:
        self.path = path
        self.host = host or str(path)

    def read(self) -> str | None:
        """The node XML, or None when the sandbox does not exist yet.

        The path comes from a manifest, so the file is read with care: only a regular file (a FIFO
        would block, a device never ends), at most :data:`MAX_STATE_BYTES`, and only a ``<node>``
        document without a DTD (whose entities could pull other files in). A file that is none of
        these is a ``PermanentHostError`` that says where it went wrong and never quotes the file:
        libvirt's own parse errors would, and they reach plans, pull requests, ``/status`` and logs.
        """
        content = self.read_bytes()
        return None if content is None else self.text_of(content)

    def read_bytes(self) -> bytes | None:
        """The file's bytes as :meth:`read` takes them (a regular file, bounded), not yet checked
        to be a ``<node>`` document (:meth:`text_of` does); None when there is no file."""
        try:
            handle = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise self._refused(f"cannot be read: {err.strerror}") from None
        try:
            status = os.fstat(handle)
            if not stat.S_ISREG(status.st_mode):
                raise self._refused("is not a regular file")
            with open(handle, "rb", closefd=False) as stream:  # a regular file: open() takes it
                content = b"" if status.st_size > MAX_STATE_BYTES else _read_bounded(stream, status.st_size)
        finally:
            os.close(handle)
        if status.st_size > MAX_STATE_BYTES or len(content) > MAX_STATE_BYTES:
            raise self._refused(
                f"is larger than {MAX_STATE_BYTES // 1024**2} MiB, the most a sandbox may hold"
            )
        return content

    def text_of(self, content: bytes) -> str:
        """The text of a well-formed ``<node>`` document without a DTD; otherwise refused."""
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as err:
            line = content.count(b"\n", 0, err.start) + 1
            raise self._refused(f"is not UTF-8 (line {line})") from None
        try:
            root = etree.fromstring(content, _CHECKING_PARSER)
        except etree.XMLSyntaxError as err:
            line, column = err.position
            raise self._refused(f"is not XML (line {line}, column {column})") from None
        if str(getattr(root.getroottree().docinfo, "doctype", "")):  # (lxml's stubs lack it)
            raise self._refused("declares a DTD, which a sandbox state file never has")
        if root.tag != "node":
            raise self._refused("is not a libvirt test driver <node> document")
        _JUST_READ[:] = [(text, _autostart_in(root), _instances_in(root))]
        if sum(1 for _ in root.iterchildren("domain")) >= PARSE_AHEAD_MIN_DOMAINS:
            _parse_ahead(text)
        return text

    def _refused(self, why: str) -> PermanentHostError:
        """The error for a state file that cannot be used: its path and why, never its content."""
        return PermanentHostError(self.host, f"sandbox state file {self.path} {why}")

    def write(self, node_xml: str) -> None:
        """Replace the state atomically (a crash leaves the old state or the new, never half)."""
        write_atomically(self.path, node_xml)


@contextmanager
def locked(path: Path, *, write: bool, host: str | None = None) -> Iterator[SandboxFile]:
    """Hold the sandbox's lock file (``PATH.lock``) for an apply's whole session, so two applies
    never interleave: a second one waits, as for any host (``hostlock``: the wait limit, then a
    ``TemporaryHostError`` naming the holder), and then reads the state the first one left.

    Readers (plan, snapshot) take no lock and create nothing: the state file is only ever replaced
    whole, so a reader sees it as it was before an apply or after it, never half, and a plan works
    in a read-only state folder. ``host`` names the host in errors (default: the path).
    """
    if not write:
        yield SandboxFile(path, host)
        return
    name = host or str(path)
    with hostlock.file_lock(path.with_name(path.name + ".lock"), name, LockLimits.from_env(name)):
        yield SandboxFile(path, host)
