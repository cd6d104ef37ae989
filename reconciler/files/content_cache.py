"""A cache of parse results keyed by the content parsed, so unchanged input skips parsing.

Two users: manifest files (YAML parsing is ~0.3 ms a file, all Python) and domain XML read from
the hosts (~0.14 ms a domain); reading a result back from JSON through pydantic costs a tenth of
that. Entries are keyed by the SHA-256 of the content, never by a modification time, so an edit
within one clock tick is still seen, and every value read back is validated again by its user.

One file per kind and scope (a manifest root, a host) lives in a private folder
(``$VIRT_RECONCILE_CACHE_DIR``, else systemd's ``$CACHE_DIRECTORY``, else
``$XDG_CACHE_HOME/virt-reconcile`` or ``~/.cache/virt-reconcile``). A cache file that is missing,
unreadable, corrupt, written by another version of this code or owned by someone else is
ignored: the cache only ever saves time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pydantic

from reconciler import __version__
from reconciler.files.atomic import write_atomically

FORMAT = 1
#: The folders (below the package) whose modules decide what a manifest or a domain XML means.
_SOURCES = ("files", "spec", "libvirtxml")


@functools.cache
def code_version() -> str:
    """A digest of the code that gives cached values their meaning: another version never reads them."""
    digest = hashlib.sha256(f"{FORMAT} {__version__} pydantic {pydantic.VERSION}".encode())
    package = Path(__file__).parent.parent
    for folder in _SOURCES:
        modules = sorted((package / folder).glob("*.py"))
        if not modules:  # installed without readable sources (a zip): the release number must do
            digest.update(folder.encode())
        for module in modules:
            digest.update(module.name.encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()


def content_digest(content: bytes | str) -> str:
    """The key of a piece of content."""
    return hashlib.sha256(content.encode() if isinstance(content, str) else content).hexdigest()


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


class CacheRound:
    """One round of one scope: the entries it found, used and added; ``finish`` keeps only those
    used and writes the scope's file if anything changed. Rounds of different scopes may run at
    once (hosts observed side by side, the daemon's lanes)."""

    def __init__(self, cache: ContentCache, path: Path | None, entries: dict[str, Any]) -> None:
        self._cache = cache
        self._path = path
        self._entries = entries
        self._seen: set[str] = set()
        self._dirty = False
        self.hits = 0
        self.misses = 0

    def get(self, digest: str) -> Any | None:
        """The value cached for content with this digest, or None."""
        value = self._entries.get(digest)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._seen.add(digest)
        return value

    def put(self, digest: str, value: Any) -> None:
        """Remember the value for content with this digest (JSON-serialisable)."""
        self._seen.add(digest)
        with self._cache.lock:
            if self._entries.get(digest) != value:
                self._entries[digest] = value
                self._dirty = True

    def forget(self, digest: str) -> None:
        """Drop a value its user refused on reading back (a hit becomes a miss)."""
        with self._cache.lock:
            self._entries.pop(digest, None)
        self._seen.discard(digest)
        self._dirty = True
        self.hits -= 1
        self.misses += 1

    def finish(self) -> None:
        """Keep only the entries this round used and write the cache file if it changed."""
        with self._cache.lock:
            stale = set(self._entries) - self._seen
            for digest in stale:
                del self._entries[digest]
            if (self._dirty or stale) and self._path is not None:
                self._cache.write(self._path, self._entries)
        self._dirty = False


class ContentCache:
    """JSON values by content digest for one kind of content, each scope (a manifest root, a host)
    in a file of its own.

    :meth:`round` starts a round of one scope (reading its file the first time); ``begin``,
    ``get``, ``put``, ``forget`` and ``finish`` work one round at a time, for a caller with one
    scope. One instance may serve many rounds (the daemon keeps its caches between passes).
    """

    def __init__(self, folder: Path | None, kind: str) -> None:
        self.folder = folder
        self.kind = kind
        self.lock = threading.Lock()  # guards the entries of every scope
        self._by_path: dict[Path, dict[str, Any]] = {}  # each scope's file is read once per instance
        self._current = CacheRound(self, None, {})

    @classmethod
    def default(cls, kind: str) -> ContentCache:
        """The cache in the user's (or service's) cache folder; one that keeps nothing when there is none."""
        return cls(default_cache_dir(), kind)

    def round(self, scope: str) -> CacheRound:
        """A new round of ``scope``, which also becomes the one ``hits``, ``get`` ... work on."""
        if self.folder is None:
            self._current = CacheRound(self, None, {})
            return self._current
        path = self.folder / self.kind / f"{content_digest(scope)[:24]}.json"
        with self.lock:
            if path not in self._by_path:
                self._by_path[path] = self._read(path)
            self._current = CacheRound(self, path, self._by_path[path])
            return self._current

    def begin(self, scope: str) -> None:
        """Start the round of ``scope`` the methods below work on."""
        self.round(scope)

    @property
    def hits(self) -> int:
        """Values found in the current round."""
        return self._current.hits

    @property
    def misses(self) -> int:
        """Values looked for and not found in the current round."""
        return self._current.misses

    def get(self, digest: str) -> Any | None:
        """The value cached for content with this digest, or None (current round)."""
        return self._current.get(digest)

    def put(self, digest: str, value: Any) -> None:
        """Remember the value for content with this digest (current round)."""
        self._current.put(digest, value)

    def forget(self, digest: str) -> None:
        """Drop a value its user refused on reading back (current round)."""
        self._current.forget(digest)

    def finish(self) -> None:
        """End the current round (see :meth:`CacheRound.finish`)."""
        self._current.finish()

    # ------------------------------------------------------------------------------- storage

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as stream:
                info = os.fstat(stream.fileno())
                if info.st_uid != os.geteuid() or info.st_mode & 0o022:
                    return {}  # someone else could have written it: not trusted
                content: Any = json.loads(stream.read())
            if content.get("format") != FORMAT or content.get("code") != code_version():
                return {}
            entries = content["entries"]
            return entries if isinstance(entries, dict) else {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    def write(self, path: Path, entries: dict[str, Any]) -> None:
        """Write one scope's entries (a failure only costs the next round its speed)."""
        content = {"format": FORMAT, "code": code_version(), "entries": entries}
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(path, json.dumps(content, separators=(",", ":")), mode=0o600)
        except OSError:
            pass  # a read-only or full disk only costs the next round its speed
