"""What the daemon reports at ``/status``, kept across restarts in ``state-dir/status.json``.

The loop thread writes; HTTP threads read. Every change and every read holds one lock, and a
reader gets a copy: a document never shows half of an update (one host new, another old).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.files.atomic import write_atomically


def now() -> str:
    """The time as ``/status`` shows it (UTC, whole seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class HostStatus:
    """What ``/status`` reports for one host."""

    revision: str = ""
    result: str = "pending"  # applied | unchanged | refused | error | pending
    appliedRevision: str = ""
    message: str = ""
    time: str = ""


@dataclass(frozen=True)
class SourceStatus:
    """What ``/status`` reports about the manifest source: the last fetch's revision and error."""

    revision: str = ""
    message: str = ""
    time: str = ""


class StatusStore:
    """Every host's status, the source's, and the revision last reconciled, behind one lock."""

    def __init__(self, path: Path, hosts: dict[str, HostStatus] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer of the file at a time
        self._hosts: dict[str, HostStatus] = dict(hosts or {})
        self._source = SourceStatus()
        self._reconciled = ""
        self._revision_error = ""  # why the revision last reconciled could not be applied, or ""

    @classmethod
    def load(cls, path: Path) -> StatusStore:
        """The hosts' status saved by an earlier run (the last applied revision survives a crash)."""
        hosts: dict[str, HostStatus] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            saved = json.loads(path.read_text())
            hosts = {name: HostStatus(**fields) for name, fields in saved.get("hosts", {}).items()}
        return cls(path, hosts)

    @property
    def reconciled_revision(self) -> str:
        """The revision the last pass took up ("" before the first): its hosts' work was handed to
        their lanes, each host's own result is in its status."""
        with self._lock:
            return self._reconciled

    @property
    def source_failing(self) -> bool:
        """Whether the last fetch of the source failed."""
        with self._lock:
            return bool(self._source.message)

    def host(self, name: str) -> HostStatus:
        """One host's status (a pending one when never reported)."""
        with self._lock:
            return self._hosts.get(name, HostStatus())

    def set_host(self, name: str, status: HostStatus) -> None:
        """Replace one host's status."""
        with self._lock:
            self._hosts[name] = status

    def missing_host(self, name: str, message: str) -> None:
        """A selected host the manifests do not define: an error at the last reconciled revision."""
        with self._lock:
            applied = self._hosts.get(name, HostStatus()).appliedRevision
            self._hosts[name] = HostStatus(self._reconciled, "error", applied, message, now())

    def source_fetched(self, revision: str) -> None:
        """The source was fetched: its error, if any, is over."""
        with self._lock:
            self._source = SourceStatus(revision, "", now())

    def source_failed(self, revision: str, message: str) -> None:
        """The source could not be fetched: it and every host known report the error."""
        with self._lock:
            self._source = SourceStatus(revision, message, now())
            self._hosts = {
                name: replace(status, result="error", message=message, time=self._source.time)
                for name, status in self._hosts.items()
            }

    def every_host_failed(self, hosts: Iterable[str], revision: str, message: str) -> None:
        """Every host known, and ``hosts``, are in error at ``revision`` (invalid manifests)."""
        with self._lock:
            self._failed(set(self._hosts) | set(hosts), revision, message)

    def hosts_failed(self, hosts: Iterable[str], revision: str, message: str) -> None:
        """``hosts`` are in error at ``revision``, their applied revision kept (a pass that failed)."""
        with self._lock:
            self._failed(hosts, revision, message)

    def _failed(self, hosts: Iterable[str], revision: str, message: str) -> None:
        time = now()
        for name in hosts:
            applied = self._hosts.get(name, HostStatus()).appliedRevision
            self._hosts[name] = HostStatus(revision, "error", applied, message, time)

    def reconciled(self, revision: str, error: str = "") -> None:
        """A pass took ``revision`` up (its hosts' work is with their lanes); ``error`` says why the
        revision could not be applied (its manifests invalid, or an error met while loading them),
        "" when it could."""
        with self._lock:
            self._reconciled = revision
            self._revision_error = error

    def document(self) -> dict[str, Any]:
        """The ``/status`` JSON: a consistent copy, safe to use while the loop goes on."""
        with self._lock:
            return {
                "hosts": {name: asdict(status) for name, status in sorted(self._hosts.items())},
                "source": asdict(self._source),
                "reconciledRevision": self._reconciled,
                "revisionError": self._revision_error,  # shown even when no host is known yet
            }

    def save(self) -> None:
        """Write the document to :attr:`path`, whole or not at all. Saves (from several host lanes)
        take turns, each writing the document as it is when its turn comes, so the file never goes
        back to an older document."""
        with self._save_lock:
            write_atomically(self.path, json.dumps(self.document(), indent=2))
