"""A cache of validated manifest files, keyed by their content, so unchanged files skip YAML parsing.

Parsing YAML is most of what loading a tree of manifests costs (about 0.3 ms a file, all Python);
re-validating a cached model from its JSON costs a tenth of that. Entries are keyed by the SHA-256
of the file's bytes, never by modification time, so an edit within the same clock tick is still
seen. Only files that loaded without any problem are cached; every model read back goes through
pydantic validation again, and cross-file checks (duplicate names, unknown hosts) run on every load.

One cache file per manifest root lives in a private folder (``$VIRT_RECONCILE_CACHE_DIR``, else
systemd's ``$CACHE_DIRECTORY``, else ``$XDG_CACHE_HOME/virt-reconcile`` or ``~/.cache/virt-reconcile``).
A cache that is missing, unreadable, corrupt, written by another version or owned by someone else is
ignored: it only ever saves time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

FORMAT = 1
_SOURCES = ("manifests.py", "manifest_cache.py", "models.py", "sizes.py")


@dataclass(frozen=True)
class CachedDocument:
    """One validated document of a cached file: its position, its kind and the model as JSON."""

    line: int
    index: int
    kind: str
    model: str


@functools.cache
def code_version() -> str:
    """A digest of the code that decides what a manifest means: another version never reads our entries."""
    digest = hashlib.sha256(f"{FORMAT} pydantic {pydantic.VERSION}".encode())
    here = Path(__file__).parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def default_cache_dir() -> Path | None:
    """Where the cache lives for this user; None when the environment turns it off or has no home."""
    explicit = os.environ.get("VIRT_RECONCILE_CACHE_DIR")
    if explicit is not None:
        return Path(explicit) if explicit and explicit.lower() not in ("0", "off", "none") else None
    systemd = os.environ.get("CACHE_DIRECTORY")  # set by CacheDirectory= in a systemd unit
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "virt-reconcile"
    with contextlib.suppress(RuntimeError):
        return Path.home() / ".cache" / "virt-reconcile"
    return None


class ManifestCache:
    """Validated documents by file digest for one manifest root, read once and written when changed.

    ``begin`` starts a load, ``get``/``put`` are used per file, ``finish`` keeps only the files that
    load saw (so deleted files drop out) and writes the cache file atomically if anything changed.
    One instance may serve many loads of the same root (the daemon keeps it between passes).
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._path: Path | None = None
        self._entries: dict[str, tuple[CachedDocument, ...]] = {}
        self._seen: set[str] = set()
        self._dirty = False
        self.hits = 0
        self.misses = 0

    @classmethod
    def default(cls) -> ManifestCache:
        """The cache in the user's (or service's) cache folder; a no-op cache when there is none."""
        return cls(default_cache_dir())

    def begin(self, root: Path) -> None:
        """Start a load of the tree at ``root``, reading its cache file the first time."""
        self._seen = set()
        self.hits = self.misses = 0
        if self.folder is None:
            return
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
        path = self.folder / "manifests" / f"{key}.json"
        if path != self._path:
            self._path = path
            self._entries = self._read(path)
            self._dirty = False

    def get(self, digest: str) -> tuple[CachedDocument, ...] | None:
        """The cached documents of a file with this content digest, or None."""
        documents = self._entries.get(digest)
        if documents is None:
            self.misses += 1
            return None
        self.hits += 1
        self._seen.add(digest)
        return documents

    def put(self, digest: str, documents: tuple[CachedDocument, ...]) -> None:
        """Remember the documents of a file that loaded without problems."""
        self._seen.add(digest)
        if self._entries.get(digest) != documents:
            self._entries[digest] = documents
            self._dirty = True

    def forget(self, digest: str) -> None:
        """Drop an entry that no longer validates (models changed without the version noticing)."""
        self._entries.pop(digest, None)
        self._seen.discard(digest)
        self._dirty = True
        self.hits -= 1
        self.misses += 1

    def finish(self) -> None:
        """Keep only the entries this load used and write the cache file if it changed."""
        stale = set(self._entries) - self._seen
        for digest in stale:
            del self._entries[digest]
        if (self._dirty or stale) and self._path is not None:
            self._write(self._path)
        self._dirty = False

    # ------------------------------------------------------------------------------- storage

    @staticmethod
    def _read(path: Path) -> dict[str, tuple[CachedDocument, ...]]:
        try:
            with path.open("rb") as stream:
                info = os.fstat(stream.fileno())
                if info.st_uid != os.geteuid() or info.st_mode & 0o022:
                    return {}  # someone else could have written it: not trusted
                content: Any = json.loads(stream.read())
            if content.get("format") != FORMAT or content.get("code") != code_version():
                return {}
            return {
                digest: tuple(CachedDocument(**document) for document in documents)
                for digest, documents in content["files"].items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    def _write(self, path: Path) -> None:
        content = {
            "format": FORMAT,
            "code": code_version(),
            "files": {
                digest: [document.__dict__ for document in documents]
                for digest, documents in sorted(self._entries.items())
            },
        }
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".manifests-", suffix=".tmp")
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    json.dump(content, stream, separators=(",", ":"))
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError:
            pass  # a read-only or full disk only costs the next load its speed
