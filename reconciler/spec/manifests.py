"""Load manifests: every ``*.yaml``/``*.yml`` below a path -> validated Host and Domain models.

All problems in the tree are collected and raised together as one :class:`ManifestError`, each
naming the file, the line and the field, so an operator fixes a pull request in one round.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from reconciler.errors import ManifestError, Problem
from reconciler.files.content_cache import ContentCache, content_digest
from reconciler.spec.crosschecks import Placed, shared_disks, shared_hypervisors
from reconciler.spec.models import API_VERSION, Domain, Host

try:
    _Base: type[yaml.CSafeLoader] = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Base = yaml.SafeLoader  # type: ignore[assignment]


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """PyYAML's C loader, noticing duplicate keys (which PyYAML would silently overwrite)."""

    has_duplicates = False

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [key.value for key, _ in node.value]
        if len(set(keys)) != len(keys):
            self.has_duplicates = True
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


Loc = tuple[str | int, ...]
KINDS: dict[str, type[BaseModel]] = {"Host": Host, "Domain": Domain}


@dataclass(frozen=True)
class Source:
    """Where a document came from: file (relative to the manifest root) and line."""

    file: str
    line: int


@dataclass(frozen=True, slots=True)
class HostKey:
    """Key of a Host document in :attr:`ManifestSet.sources` (a type of its own, so no domain meets it)."""

    name: str


@dataclass(frozen=True, slots=True)
class DomainKey:
    """Key of a Domain document in :attr:`ManifestSet.sources`: the host it lives on and its name."""

    host: str
    name: str


SourceKey = HostKey | DomainKey


@dataclass
class ManifestSet:
    """The validated manifests: hosts by name and, per host, its domains by name."""

    root: Path
    whole_tree: bool = True  # loaded from a folder; False for a single file (it never prunes)
    hosts: dict[str, Host] = field(default_factory=dict)
    domains: dict[str, dict[str, Domain]] = field(default_factory=dict)
    sources: dict[SourceKey, Source] = field(default_factory=dict)

    def host_source(self, name: str) -> Source:
        """The file and line of a host's document."""
        return self.sources[HostKey(name)]

    def domain_source(self, host: str, name: str) -> Source:
        """The file and line of a domain's document."""
        return self.sources[DomainKey(host, name)]


@dataclass
class _Document:
    """One parsed YAML document before validation: data plus a map from field path to line."""

    file: str
    line: int
    data: Any
    text: str
    index: int
    _lines: dict[Loc, int] | None = None

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest known part of a field path (a missing field: its parent)."""
        if self._lines is None:
            # Composed again only when a problem needs a line: keeping every node tree alive for
            # the few documents that have problems would slow the garbage collector for all.
            self._lines = {}
            loader = _Loader(self.text)
            try:
                for _ in range(self.index + 1):
                    loader.check_node()  # the C parser needs it before each get_node
                    node = loader.get_node()
            finally:
                loader.dispose()
            _record_lines(node, (), self._lines, self.file, [])
        for end in range(len(loc), -1, -1):
            if loc[:end] in self._lines:
                return self._lines[loc[:end]]
        return self.line


def manifest_files(path: Path) -> list[Path]:
    """Every manifest file at or below ``path``, in a stable order, hidden folders skipped (a folder
    that cannot be read is left out here; loading the manifests reports it)."""
    return [Path(file) for file, _ in _manifest_paths(path, [])]


def _manifest_paths(path: Path, problems: list[Problem]) -> list[tuple[str, str]]:
    """Each manifest file as (path, path shown to people), sorted folder by folder.

    A folder that cannot be listed (permissions, no file descriptors left) is a problem, never
    skipped: its domains would look deleted, and a prune would undefine them. Plain strings rather
    than Path objects: for a tree of small files, building and comparing Paths cost as much as
    reading the files.
    """
    if path.is_file():
        return [(str(path), path.name)]
    top = str(path)

    def unreadable(err: OSError) -> None:
        shown = os.path.relpath(err.filename, top) if err.filename else top
        problems.append(Problem(shown if shown != "." else top, None, None, f"cannot read: {err.strerror}"))

    found: list[tuple[str, str]] = []
    for folder, subfolders, names in os.walk(top, onerror=unreadable):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        relative = os.path.relpath(folder, top)
        found.extend(
            (os.path.join(folder, name), name if relative == "." else os.path.join(relative, name))
            for name in names
            if name.endswith((".yaml", ".yml")) and not name.startswith(".")
        )
    found.sort(key=lambda item: item[1].split(os.sep))  # as Paths sort: "vms/a" before "vms-old/a"
    return found


def load_manifests(path: Path | str, cache: ContentCache | None = None) -> ManifestSet:
    """Load and validate every manifest below ``path``; raise ManifestError listing every problem.

    With a ``cache``, files whose content loaded cleanly before skip YAML parsing (same result).
    """
    root = Path(path)
    if not root.exists():
        raise ManifestError([Problem(str(root), None, None, "no such file or directory")])
    base = root if root.is_dir() else root.parent
    problems: list[Problem] = []
    if cache is not None:
        cache.begin(str(root.resolve()))
    loaded = _load_tree(root, problems, cache)
    if cache is not None:
        cache.finish()
    if not loaded and not problems:
        problems.append(Problem(str(root), None, None, "no manifests (*.yaml, *.yml) found"))
    manifests = _assemble(loaded, base, problems)
    manifests.whole_tree = root.is_dir()
    if problems:
        raise ManifestError(sorted(problems, key=lambda p: (p.file, p.line or 0)))
    return manifests


def _load_tree(
    root: Path, problems: list[Problem], cache: ContentCache | None
) -> list[tuple[BaseModel, _Document]]:
    """Every valid document of every manifest file below ``root``, in file order."""
    loaded: list[tuple[BaseModel, _Document]] = []
    for file, display in _manifest_paths(root, problems):
        try:
            with open(file, "rb") as stream:
                content = stream.read()
            text = content.decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            problems.append(Problem(display, None, None, f"cannot read: {err}"))
            continue
        loaded.extend(_load_file(content, text, display, problems, cache))
    return loaded


def _assemble(loaded: list[tuple[BaseModel, _Document]], base: Path, problems: list[Problem]) -> ManifestSet:
    """Index the documents by name: every host first, so a domain may name a host from any file."""
    manifests = ManifestSet(root=base.resolve())
    domain_docs: list[tuple[Domain, _Document]] = []
    hosts: list[tuple[Host, Placed]] = []
    for model, doc in loaded:
        if isinstance(model, Host):
            added = _add_host(manifests, model, doc, base, problems)
            if added is not None:
                hosts.append((added, Placed(doc.file, doc.line_of)))
        elif isinstance(model, Domain):
            domain_docs.append((model, doc))
    placed = []
    for domain, doc in domain_docs:
        host = _add_domain(manifests, domain, doc, problems)
        if host is not None:
            placed.append((host, domain, Placed(doc.file, doc.line_of)))
    problems += shared_hypervisors(hosts)
    problems += shared_disks(placed)
    return manifests


def _load_file(
    content: bytes, text: str, file: str, problems: list[Problem], cache: ContentCache | None
) -> list[tuple[BaseModel, _Document]]:
    """Every valid document of one file, from the cache when this content loaded cleanly before.

    A cached file is a list of ``[line, index, kind, model JSON]``, one per document.
    """
    digest = content_digest(content) if cache is not None else ""
    cached = cache.get(digest) if cache is not None else None
    if cache is not None and cached is not None:
        try:
            return [
                (KINDS[kind].model_validate_json(model), _Document(file, line, None, text, index))
                for line, index, kind, model in cached
            ]
        except (ValidationError, KeyError, TypeError, ValueError):
            cache.forget(digest)  # not what this code would have written: parse the file again
    before = len(problems)
    loaded = []
    for doc in _parse_yaml(text, file, problems):
        model = _validate(doc, problems)
        if model is not None:
            loaded.append((model, doc))
    if cache is not None and len(problems) == before:
        cache.put(
            digest,
            [
                [doc.line, doc.index, type(model).__name__, model.model_dump_json(by_alias=True)]
                for model, doc in loaded
            ],
        )
    return loaded


def _parse_yaml(text: str, file: str, problems: list[Problem]) -> Iterator[_Document]:
    """Parse every document of one file with the C loader."""
    loader = _Loader(text)
    index = -1
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                continue
            loader.has_duplicates = False
            data = loader.construct_document(node)
            if loader.has_duplicates:
                _record_lines(node, (), {}, file, problems)  # reports each duplicate with its path
            if data is None:
                continue
            yield _Document(file, node.start_mark.line + 1, data, text, index)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(err, "problem", None) or str(err)
        problems.append(Problem(file, line, None, f"YAML syntax error: {reason}"))
    finally:
        loader.dispose()


def _record_lines(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], file: str, problems: list[Problem]
) -> None:
    """Walk a composed YAML node tree and note the line of each mapping key and list item."""
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*loc, key)
            if key in seen:
                problems.append(Problem(file, key_node.start_mark.line + 1, _dotted(child), "duplicate key"))
            seen.add(key)
            _record_lines(value_node, child, lines, file, problems)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*loc, index), lines, file, problems)


def _dotted(loc: Loc) -> str:
    """Render a field path the way a manifest author reads it: ``spec.disks[0].path``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validate(doc: _Document, problems: list[Problem]) -> BaseModel | None:
    """Validate one document against the model its ``kind`` names."""
    model_type = _model_type(doc, problems)
    if model_type is None:
        return None
    try:
        return model_type.model_validate(doc.data)
    except ValidationError as err:
        for error in err.errors(include_url=False):
            loc = tuple(error["loc"])
            problems.append(Problem(doc.file, doc.line_of(loc), _dotted(loc), _message(error, model_type)))
        return None


def _model_type(doc: _Document, problems: list[Problem]) -> type[BaseModel] | None:
    """The model a document's ``kind`` names, or None (and a problem) when it is not a manifest."""
    data = doc.data
    if not isinstance(data, dict):
        problems.append(
            Problem(doc.file, doc.line, None, f"a manifest must be a mapping, not {type(data).__name__}")
        )
        return None
    if data.get("apiVersion") != API_VERSION:
        problems.append(
            Problem(
                doc.file,
                doc.line_of(("apiVersion",)),
                "apiVersion",
                f"expected {API_VERSION!r}, got {data.get('apiVersion')!r}",
            )
        )
        return None
    kind = data.get("kind")
    model_type = KINDS.get(kind) if isinstance(kind, str) else None
    if model_type is None:
        problems.append(
            Problem(
                doc.file,
                doc.line_of(("kind",)),
                "kind",
                f"expected one of {', '.join(KINDS)}, got {kind!r}",
            )
        )
    return model_type


def _message(error: Any, model_type: type[BaseModel]) -> str:
    """Turn a pydantic error into a sentence for a manifest author."""
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field" + _suggestion(model_type, tuple(error["loc"]))
    if kind == "missing":
        return "required field is missing"
    if kind == "string_type" and isinstance(value, int | float | bool):
        return f"expected a string, but YAML read {value!r} as {type(value).__name__}: put it in quotes"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _suggestion(model_type: type[BaseModel], loc: Loc) -> str:
    """``; did you mean X?`` naming the known field closest to the unknown one at ``loc``, or ``""``.

    Computed only for a document that failed, so a clean load never pays for it.
    """
    if not loc or not isinstance(loc[-1], str):
        return ""
    owner = _model_at(model_type, loc[:-1])
    if owner is None:
        return ""
    aliases = [info.alias or name for name, info in owner.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], aliases, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _model_at(model_type: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model a field path leads to (list indexes stay on the item model), or None."""
    current: type[BaseModel] | None = model_type
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a tuple of models: the item model was found with the tuple
        field_type = _field_types(current).get(part) if current is not None else None
        current = _model_in(field_type)
    return current


def _field_types(model_type: type[BaseModel]) -> dict[str, Any]:
    """A model's field types by every key a manifest may use: alias, and name (populate_by_name)."""
    types = {name: info.annotation for name, info in model_type.model_fields.items()}
    types.update({info.alias: info.annotation for info in model_type.model_fields.values() if info.alias})
    return types


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field's type holds: itself, or inside Optional, Annotated or tuple[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _add_host(
    manifests: ManifestSet, host: Host, doc: _Document, base: Path, problems: list[Problem]
) -> Host | None:
    """Add a host, its sandbox path resolved against its file; a second host of that name is a problem."""
    name = host.name
    if name in manifests.hosts:
        first = manifests.host_source(name)
        problems.append(
            Problem(
                doc.file,
                doc.line_of(("metadata", "name")),
                "metadata.name",
                f"host {name!r} is already defined at {first.file}:{first.line}",
            )
        )
        return None
    uri = host.spec.address.resolved((base / doc.file).parent)
    if uri.text != host.spec.uri:
        host = host.model_copy(update={"spec": host.spec.model_copy(update={"uri": uri.text})})
    manifests.hosts[name] = host
    manifests.domains.setdefault(name, {})
    manifests.sources[HostKey(name)] = Source(doc.file, doc.line)
    return host


def _add_domain(
    manifests: ManifestSet, domain: Domain, doc: _Document, problems: list[Problem]
) -> str | None:
    """Add a domain to its host (whose name it returns); an unknown host or a second domain of that
    name is a problem."""
    host = _host_of(manifests, domain, doc, problems)
    if host is None:
        return None
    name = domain.name
    if name in manifests.domains[host]:
        first = manifests.domain_source(host, name)
        problems.append(
            Problem(
                doc.file,
                doc.line_of(("metadata", "name")),
                "metadata.name",
                f"domain {name!r} on host {host!r} is already defined at {first.file}:{first.line}",
            )
        )
        return None
    manifests.domains[host][name] = domain
    manifests.sources[DomainKey(host, name)] = Source(doc.file, doc.line)
    return host


def _host_of(manifests: ManifestSet, domain: Domain, doc: _Document, problems: list[Problem]) -> str | None:
    """The host a domain lives on: the one it names, else the only one; None (and a problem) if neither."""
    host = domain.metadata.host
    if host is None:
        if len(manifests.hosts) == 1:
            return next(iter(manifests.hosts))
        known = ", ".join(sorted(manifests.hosts))
        reason = "no Host document exists" if not manifests.hosts else f"several hosts exist ({known})"
        problems.append(
            Problem(doc.file, doc.line_of(("metadata",)), "metadata.host", f"required because {reason}")
        )
        return None
    if host not in manifests.hosts:
        known = ", ".join(sorted(manifests.hosts)) or "none"
        problems.append(
            Problem(
                doc.file,
                doc.line_of(("metadata", "host")),
                "metadata.host",
                f"unknown host {host!r} (hosts: {known})",
            )
        )
        return None
    return host
