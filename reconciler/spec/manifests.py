"""Load manifests: every ``*.yaml``/``*.yml`` below a path -> validated Host, Domain and Pool models.

All problems in the tree are collected and raised together as one :class:`ManifestError`, each
naming the file, the line and the field, so an operator fixes a pull request in one round.

A manifest's author is not trusted: files are read within the limits of ``yamltree`` (size,
nesting, alias expansion, strings libvirt's XML can carry), and Host URIs are held to the
operator's :class:`UriRules` and to files inside the manifest root (``hosturi``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from reconciler.errors import ManifestError, Problem
from reconciler.files.content_cache import ContentCache, content_digest
from reconciler.spec import crosschecks
from reconciler.spec.cloudinit import Seed, is_user_data, load_seed, referenced_files
from reconciler.spec.crosschecks import Placed, seed_name_clashes, shared_disks, shared_hypervisors
from reconciler.spec.hosturi import DEFAULT_URI_RULES, UriRules
from reconciler.spec.models import API_VERSION, Domain, Host
from reconciler.spec.poolrefs import pool_problem, unknown_pools
from reconciler.spec.storage import Pool
from reconciler.spec.untrusted import FORBIDDEN, Loc, bad_strings, dotted, printable, read_manifest

# PyYAML and ``yamltree`` are imported by the functions that parse, when a file must be: the files
# whose parse the cache holds are loaded without them.
if TYPE_CHECKING:
    import yaml

#: Mixed into each cache key: a file cached by code that checked less is read (and checked) again.
_CHECKS = b"virt-reconcile manifest checks 2\n"

KINDS: dict[str, type[BaseModel]] = {"Host": Host, "Domain": Domain, "Pool": Pool}


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


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Key of a Pool document in :attr:`ManifestSet.sources`: the host it lives on and its name."""

    host: str
    name: str


SourceKey = HostKey | DomainKey | PoolKey


@dataclass
class ManifestSet:
    """The validated manifests: hosts by name and, per host, its domains and its pools by name."""

    root: Path
    whole_tree: bool = True  # loaded from a folder; False for a single file (it never prunes)
    hosts: dict[str, Host] = field(default_factory=dict)
    domains: dict[str, dict[str, Domain]] = field(default_factory=dict)
    sources: dict[SourceKey, Source] = field(default_factory=dict)
    pools: dict[str, dict[str, Pool]] = field(default_factory=dict)
    seeds: dict[DomainKey, Seed] = field(default_factory=dict)  # cloud-init seeds, read from their files

    def host_source(self, name: str) -> Source:
        """The file and line of a host's document."""
        return self.sources[HostKey(name)]

    def domain_source(self, host: str, name: str) -> Source:
        """The file and line of a domain's document."""
        return self.sources[DomainKey(host, name)]

    def pool_source(self, host: str, name: str) -> Source:
        """The file and line of a pool's document."""
        return self.sources[PoolKey(host, name)]

    def volume_pool_problem(self, host: str, pool: str) -> str | None:
        """Why a disk's ``volume.pool`` cannot be used on ``host`` (no Pool of that name there), or None."""
        return pool_problem(self.pools, host, pool)


@dataclass
class _Document:
    """One parsed YAML document before validation: data plus a map from field path to line."""

    file: str
    line: int
    data: Any
    text: str
    index: int
    _lines: dict[Loc, int] | None = None
    refused: bool = False  # a string it holds is refused: reported, never validated into a model

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest known part of a field path (a missing field: its parent)."""
        if self._lines is None:
            # Composed again only when a problem needs a line: keeping every node tree alive for
            # the few documents that have problems would slow the garbage collector for all.
            from reconciler.spec.yamltree import Loader, record_lines

            loader = Loader(self.text)
            try:
                for _ in range(self.index + 1):
                    loader.check_node()  # the C parser needs it before each get_node
                    node = loader.get_node()
            finally:
                loader.dispose()
            self._lines = record_lines(node, self.file, [])
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


def load_manifests(
    path: Path | str,
    cache: ContentCache | None = None,
    *,
    uri_rules: UriRules = DEFAULT_URI_RULES,
    on_host: Callable[[Host], None] | None = None,
) -> ManifestSet:
    """Load and validate every manifest below ``path``; raise ManifestError listing every problem.

    With a ``cache``, files whose content loaded cleanly before skip YAML parsing (same result).
    ``uri_rules`` is what the operator lets Host URIs use beyond the defaults (never the manifests:
    see :class:`UriRules`); sandbox state files must lie inside the manifest root. ``on_host`` sees
    each valid Host, its URI allowed and resolved, as soon as its file is loaded (the CLI starts
    opening the host while the other files load); the ManifestSet may still end up refused.
    """
    root = Path(path)
    if not root.exists():
        raise ManifestError([Problem(str(root), None, None, "no such file or directory")])
    base = root if root.is_dir() else root.parent
    problems: list[Problem] = []
    if cache is not None:
        cache.begin(str(root.resolve()))
    early = functools.partial(_host_seen, on_host, base.resolve(), uri_rules) if on_host else None
    loaded = _load_tree(root, problems, cache, early)
    if cache is not None:
        cache.finish()
    seed_files = referenced_files((m.spec.cloud_init, d.file) for m, d in loaded if isinstance(m, Domain))
    if seed_files:  # cloud-init files (user-data.yaml...) in the tree are not manifests
        problems[:] = [problem for problem in problems if problem.file not in seed_files]
        loaded = [(model, doc) for model, doc in loaded if doc.file not in seed_files]
    if not loaded and not problems:
        problems.append(Problem(str(root), None, None, "no manifests (*.yaml, *.yml) found"))
    manifests = _assemble(loaded, base, problems, uri_rules)
    manifests.whole_tree = root.is_dir()
    if problems:
        raise ManifestError(sorted(problems, key=lambda p: (p.file, p.line or 0)))
    return manifests


def _load_tree(
    root: Path, problems: list[Problem], cache: ContentCache | None, seen: Callable[..., None] | None = None
) -> list[tuple[BaseModel, _Document]]:
    """Every valid document of every manifest file below ``root``, in file order (each handed to
    ``seen`` as its file is loaded)."""
    loaded: list[tuple[BaseModel, _Document]] = []
    for file, display in _manifest_paths(root, problems):
        if FORBIDDEN.search(display):  # it would reach the ownership metadata in libvirt's XML
            problems.append(Problem(printable(display), None, None, "a control character in the file name"))
            continue
        read = read_manifest(file, display, problems)
        if read is not None and not is_user_data(read[0]):  # cloud-init user-data.yaml is no manifest
            documents = _load_file(*read, display, problems, cache)
            loaded.extend(documents)
            if seen is not None:
                for model, doc in documents:
                    seen(model, doc)
    return loaded


def _assemble(
    loaded: list[tuple[BaseModel, _Document]], base: Path, problems: list[Problem], rules: UriRules
) -> ManifestSet:
    """Index the documents by name: every host first, so a domain or a pool may name a host from any
    file, then every pool, so a domain's volume may name a pool from any file."""
    manifests = ManifestSet(root=base.resolve())
    others: list[tuple[Domain | Pool, _Document]] = []
    hosts: list[tuple[Host, Placed]] = []
    for model, doc in loaded:
        if isinstance(model, Host):
            added = _add_host(manifests, model, doc, problems, rules)
            if added is not None:
                hosts.append((added, Placed(doc.file, doc.line_of)))
        elif isinstance(model, Domain | Pool):
            others.append((model, doc))
    placed = []
    for model, doc in sorted(others, key=lambda item: isinstance(item[0], Domain)):  # pools first
        host = _add_placed(manifests, model, doc, problems)
        if host is not None and isinstance(model, Domain):
            placed.append((host, model, Placed(doc.file, doc.line_of)))
            problems += _seed_files(manifests, host, model, doc)
    problems += shared_hypervisors(hosts)
    problems += shared_disks(placed) + seed_name_clashes(placed)
    problems += unknown_pools(manifests.pools, placed)
    return manifests


def _load_file(
    content: bytes, text: str, file: str, problems: list[Problem], cache: ContentCache | None
) -> list[tuple[BaseModel, _Document]]:
    """Every valid document of one file, from the cache when this content loaded cleanly before.

    A cached file is a list of ``[line, index, kind, model JSON]``, one per document.
    """
    digest = content_digest(_CHECKS + content) if cache is not None else ""
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
        if model is not None and not doc.refused:
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
    """Parse every document of one file with the C loader, within the limits of ``yamltree``."""
    import yaml

    from reconciler.spec import yamltree
    from reconciler.spec.yamltree import MAX_NODES, Loader, Refusal, construct, measure, record_lines

    loader = Loader(text)
    index = -1
    budget = MAX_NODES
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                continue
            loader.has_duplicates = False
            size = measure(node, budget)
            data, refusal = (None, size) if isinstance(size, Refusal) else construct(loader, node)
            if refusal is not None:
                problems.append(Problem(file, refusal.line, None, refusal.message))
                continue
            budget -= size if isinstance(size, int) else 0
            if loader.has_duplicates:
                record_lines(node, file, problems)  # reports each duplicate with its path
            if data is not None:
                yield _checked(_Document(file, node.start_mark.line + 1, data, text, index), node, problems)
    except yaml.YAMLError as err:
        reason = f"YAML syntax error: {yamltree.error_reason(err)}"
        problems.append(Problem(file, yamltree.error_line(err, text), None, reason))
    finally:
        loader.dispose()


def _checked(doc: _Document, node: yaml.Node, problems: list[Problem]) -> _Document:
    """The document, marked refused (and each problem reported) when a string it holds may not be
    used: a control character, a character XML cannot carry, a value of a type no field takes."""
    from reconciler.spec.yamltree import record_lines

    for loc, message in bad_strings(doc.data):
        if doc._lines is None:
            doc._lines = record_lines(node, doc.file, [])
        doc.refused = True
        problems.append(Problem(doc.file, doc.line_of(loc), dotted(loc), message))
    return doc


def _validate(doc: _Document, problems: list[Problem]) -> BaseModel | None:
    """Validate one document against the model its ``kind`` names."""
    model_type = _model_type(doc, problems)
    if model_type is None:
        return None
    try:
        return model_type.model_validate(doc.data)
    except ValidationError as err:
        from reconciler.spec.messages import validation_message  # (and difflib) only for a problem

        for error in err.errors(include_url=False):
            loc = tuple(error["loc"])
            problems.append(
                Problem(doc.file, doc.line_of(loc), dotted(loc), validation_message(error, model_type))
            )
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


def _add_host(
    manifests: ManifestSet, host: Host, doc: _Document, problems: list[Problem], rules: UriRules
) -> Host | None:
    """Add a host, its sandbox path resolved against its file; a second host of that name, or a URI
    the operator's ``rules`` or the manifest root do not allow, is a problem."""
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
    host, refusal = crosschecks.checked_host(host, doc.file, manifests.root, rules)
    if refusal is not None:
        problems.append(Problem(doc.file, doc.line_of(("spec", "uri")), "spec.uri", refusal))
    manifests.hosts[name] = host
    manifests.domains.setdefault(name, {})
    manifests.pools.setdefault(name, {})
    manifests.sources[HostKey(name)] = Source(doc.file, doc.line)
    return host


def _host_seen(
    on_host: Callable[[Host], None], root: Path, rules: UriRules, model: Any, doc: _Document
) -> None:
    """Hand a Host whose URI ``rules`` allow to ``on_host``, as soon as its file is loaded."""
    if (
        isinstance(model, Host)
        and (checked := crosschecks.checked_host(model, doc.file, root, rules))[1] is None
    ):
        on_host(checked[0])


def _add_placed(
    manifests: ManifestSet, model: Domain | Pool, doc: _Document, problems: list[Problem]
) -> str | None:
    """Add a domain or a pool to its host (whose name it returns); an unknown host, or a second
    domain (pool) of that name on the host, is a problem."""
    host = _host_of(manifests, model.metadata.host, doc, problems)
    if host is None:
        return None
    key = DomainKey(host, model.name) if isinstance(model, Domain) else PoolKey(host, model.name)
    first = manifests.sources.get(key)
    if first is not None:
        kind = type(model).__name__.lower()
        why = f"{kind} {model.name!r} on host {host!r} is already defined at {first.file}:{first.line}"
        problems.append(Problem(doc.file, doc.line_of(("metadata", "name")), "metadata.name", why))
        return None
    if isinstance(model, Domain):
        manifests.domains[host][model.name] = model
    else:
        manifests.pools[host][model.name] = model
    manifests.sources[key] = Source(doc.file, doc.line)
    return host


def _seed_files(manifests: ManifestSet, host: str, domain: Domain, doc: _Document) -> list[Problem]:
    """Read the files of a domain's cloud-init seed (every load: they are not part of the manifest
    the cache keys on); a problem for each file that cannot be used, or a pool no Pool makes."""
    cloud_init = domain.spec.cloud_init
    if cloud_init is None:
        return []
    folder = (manifests.root / doc.file).parent
    seed, found = load_seed(domain.name, cloud_init, folder, manifests.root)
    problems = [
        Problem(doc.file, doc.line_of(("spec", "cloudInit", *loc)), dotted(("spec", "cloudInit", *loc)), why)
        for loc, why in found
    ]
    volume_pools = {disk.volume.pool for disk in domain.spec.disks if disk.volume is not None}
    unknown = manifests.volume_pool_problem(host, cloud_init.pool) if cloud_init.pool else None
    if unknown is not None and cloud_init.pool not in volume_pools:  # a volume's pool is reported once
        loc = ("spec", "cloudInit", "pool")
        problems.append(Problem(doc.file, doc.line_of(loc), dotted(loc), unknown))
    if seed is not None:
        manifests.seeds[DomainKey(host, domain.name)] = seed
    return problems


def _host_of(manifests: ManifestSet, host: str | None, doc: _Document, problems: list[Problem]) -> str | None:
    """The host a domain or pool lives on: ``host`` (the one it names), else the only one; None (and
    a problem) if neither."""
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
