"""Reading YAML a stranger wrote: bounded in size, nesting and alias expansion, strings XML can carry.

Manifests arrive in pull requests, and a pull request's author is not trusted: whatever a manifest
holds must fail validation quickly, with a file and a line, rather than exhaust the reconciler's
memory or stack, or reach libvirt's XML. The limits are fixed, not settings, so a manifest that is
valid for the plan workflow of a pull request is valid for every reconciler that applies it:

* a manifest file holds at most :data:`~reconciler.spec.untrusted.MAX_FILE_BYTES` (1 MiB, some
  5,000 domains; split larger sets into several files, which the loader reads as one tree);
* a document nests at most :data:`MAX_DEPTH` levels (a Domain needs 5);
* a file expands to at most :data:`MAX_NODES` YAML nodes, aliases counted by what they expand to
  (no 1 MiB file reaches that without aliases; a "billion laughs" alias bomb does at once), and an
  alias never refers to a node that contains it;
* numbers have at most :data:`MAX_NUMBER_DIGITS` digits, and only YAML's core types are read
  (no ``!!binary``, ``!!set``, ``!!omap``...);
* no string (keys included) holds a control character (C0 with tab and line breaks, DEL, C1) or a
  character XML cannot carry (surrogates, U+FFFE, U+FFFF).

Everything here walks node trees and data with explicit stacks, never recursion. Reading the file
within its size and checking its strings need no YAML: they are :mod:`reconciler.spec.untrusted`'s,
so that a manifest whose parse the cache holds is loaded without PyYAML.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.errors import Problem
from reconciler.spec.untrusted import Loc, dotted, printable

try:
    _Base: type[yaml.CSafeLoader] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Base = yaml.SafeLoader  # type: ignore[assignment]

MAX_DEPTH = 64
MAX_NODES = 1_000_000
MAX_NUMBER_DIGITS = 100

_CORE = "tag:yaml.org,2002:"
#: The YAML tags a manifest may use: the core schema, timestamps, and ``<<`` merge keys.
_TAGS = frozenset(_CORE + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp"))
_TAGS |= {_CORE + "merge"}


class Loader(_Base):  # type: ignore[valid-type,misc]
    """PyYAML's C loader, noticing duplicate keys (which PyYAML would silently overwrite)."""

    has_duplicates = False

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
        if len(set(keys)) != len(keys):
            self.has_duplicates = True
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Refusal:
    """Why a document is not read: the line, and a sentence (a problem of its file)."""

    line: int
    message: str


def _children(node: yaml.Node) -> list[yaml.Node]:
    """A node's child nodes: a mapping's keys and values, a sequence's items; none for a scalar."""
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _check_node(node: yaml.Node) -> Refusal | None:
    """Refuse a tag outside the core schema, and a number too long to be a count or a size."""
    if node.tag not in _TAGS:
        shown = node.tag.replace(_CORE, "!!")
        return Refusal(_line(node), f"YAML tag {printable(shown[:40])} is not allowed in a manifest")
    if node.tag == _CORE + "int" and len(node.value) > MAX_NUMBER_DIGITS:
        return Refusal(_line(node), f"a number of more than {MAX_NUMBER_DIGITS} digits")
    return None


def measure(root: yaml.Node, budget: int) -> int | Refusal:
    """How many nodes ``root`` expands to, aliases counted by their expansion, computed once per
    node (so an alias bomb costs its size in the file, not its expansion). A :class:`Refusal` when
    that passes ``budget``, when the nesting passes :data:`MAX_DEPTH`, at an alias that contains
    itself, or at a node :func:`_check_node` refuses."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(child)] for child in children)
            height[key] = 1 + max((height[id(child)] for child in children), default=0)
            if size[key] > budget:
                return Refusal(_line(node), f"aliases expand this file past {MAX_NODES:,} YAML nodes")
            if height[key] > MAX_DEPTH:
                return Refusal(_line(node), f"nests more than {MAX_DEPTH} levels deep")
        elif key in open_nodes:
            return Refusal(_line(node), "an alias refers to a node that contains it")
        elif key not in size:
            refused = _check_node(node)
            if refused is not None:
                return refused
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(_children(node)))
    return size[id(root)]


#: What PyYAML's constructors raise, besides YAMLError, on values they cannot build.
_CONSTRUCTOR_ERRORS = (ValueError, TypeError, AttributeError, OverflowError, IndexError, KeyError)


def construct(loader: Loader, node: yaml.Node) -> tuple[Any, Refusal | None]:
    """The document's data, or a :class:`Refusal` at the line of a value PyYAML cannot construct.

    PyYAML's constructors raise plain Python errors on some values (``!!int abc``, a timestamp in
    month 13); when one does, the scalars are constructed one by one to find the culprit's line.
    """
    try:
        return loader.construct_document(node), None
    except _CONSTRUCTOR_ERRORS:
        pass
    try:
        for scalar in _scalars(node):
            _forget(loader)
            try:
                loader.construct_object(scalar)
            except (*_CONSTRUCTOR_ERRORS, yaml.YAMLError):
                return None, Refusal(_line(scalar), f"cannot read the value {printable(scalar.value[:40])!r}")
        return None, Refusal(_line(node), "cannot read the document")
    finally:
        _forget(loader)


def _forget(loader: Loader) -> None:
    """Reset what PyYAML's constructor keeps while it builds a document (a failed one leaves it)."""
    loader.constructed_objects = {}
    loader.recursive_objects = {}
    loader.state_generators = []


def _scalars(root: yaml.Node) -> Iterator[yaml.Node]:
    """Every distinct scalar node below ``root``, in document order."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            yield node
        stack.extend(reversed(_children(node)))


def record_lines(root: yaml.Node, file: str, problems: list[Problem]) -> dict[Loc, int]:
    """The line of each mapping key and list item below ``root``, by field path; each duplicate key
    is added to ``problems`` with its path. Walked with a stack: nesting never meets Python's limit."""
    lines: dict[Loc, int] = {(): _line(root)}
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            entries = []
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = (*loc, key)
                if key in seen:
                    problems.append(Problem(file, _line(key_node), dotted(child), "duplicate key"))
                seen.add(key)
                lines[child] = _line(key_node)
                entries.append((value_node, child))
            stack.extend(reversed(entries))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*loc, index)] = _line(item)
            stack.extend(reversed([(item, (*loc, index)) for index, item in enumerate(node.value)]))
    return lines


def error_line(err: yaml.YAMLError, text: str) -> int | None:
    """The line a YAML error names; a reader error (a character YAML refuses) gives a byte offset."""
    if isinstance(err, yaml.reader.ReaderError):
        return text.encode("utf-8", "surrogatepass")[: err.position].count(b"\n") + 1
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def error_reason(err: yaml.YAMLError) -> str:
    """What a YAML error says is wrong, without the text it quotes (a terminal must not see it raw)."""
    if isinstance(err, yaml.reader.ReaderError):
        character = err.character if isinstance(err.character, int) else ord(err.character[:1] or "?")
        return f"character U+{character:04X} is not allowed in YAML ({err.reason})"
    return printable(str(getattr(err, "problem", None) or err))
