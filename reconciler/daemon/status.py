"""What the daemon reports at ``/status``, kept across restarts in ``state-dir/status.json``.

Per host: its last result, and each managed domain's sync state and health
(:mod:`~reconciler.engine.syncstate`), the policy's usage against each limit, the pending restarts,
whether it is suspended and why its changes wait. Beside the hosts: the passes running now
(``inProgress``) and the last :data:`HISTORY` passes, newest first (``history``: what each pass did,
so the "applied" of a push is not lost when the pass that follows its own events says "unchanged").
A pass that says again what its hosts' last entry said (the same revision, result and message: a
resync finding nothing, a retry meeting the same error every minute) is merged into that entry,
which counts the passes (``count``) from the first (``first``) to the last (``time``).

Only the hosts this daemon manages are shown: once a revision's manifests are taken up, a host it
no longer manages (relabelled out of its selector, removed from git, renamed) is dropped
(:meth:`StatusStore.keep_only`), and a late report of one (its pass was running) is ignored. The
history keeps its entries: they are what happened.

The loop thread and the host lanes write; HTTP threads read. Every change and every read holds one
lock, and a reader gets a copy: a document never shows half of an update (one host new, another old).
A ``status.json`` from an older version (no domains, no history) loads as far as it goes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.daemon.verdict import HostVerdict
from reconciler.engine.apply import ActionResult
from reconciler.engine.plan import HostPlan
from reconciler.engine.syncstate import DomainState, Sync
from reconciler.files.atomic import write_atomically

HISTORY = 50  # passes kept in ``history``


def now() -> str:
    """The time as ``/status`` shows it (UTC, whole seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class HostStatus:
    """What ``/status`` reports for one host (its collections are never changed once built)."""

    revision: str = ""
    result: str = "pending"  # applied | unchanged | refused | error | deferred | suspended | pending
    appliedRevision: str = ""
    message: str = ""
    time: str = ""
    domains: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {sync, health, message}
    policy: list[dict[str, Any]] = field(default_factory=list)  # {rule, unit, usage, planned, limit, ok}
    pendingRestarts: list[str] = field(default_factory=list)
    suspended: bool = False  # the host's suspend annotation: every domain left alone
    deferred: str = ""  # why its changes wait (outside its sync windows), "" when they do not


@dataclass(frozen=True)
class HostReport:
    """What a host's pass found beside its verdict: each domain's state, the policy's usage, the
    pending restarts, and whether it is suspended or its changes wait."""

    domains: dict[str, dict[str, str]] = field(default_factory=dict)
    policy: list[dict[str, Any]] = field(default_factory=list)
    pendingRestarts: list[str] = field(default_factory=list)
    suspended: bool = False
    deferred: str = ""

    @classmethod
    def of(
        cls,
        plan: HostPlan | None,
        results: Sequence[ActionResult],
        states: dict[str, DomainState],
        *,
        suspended: bool = False,
    ) -> HostReport:
        """The report of a host from its plan (None: not planned), the apply's results and its
        domains' states; ``suspended`` when the host's own annotation suspends it."""
        pending = sorted(name for name, state in states.items() if state.sync is Sync.PENDING_RESTART)
        return cls(
            domains={name: state.document() for name, state in states.items()},
            policy=policy_rows(plan, applied=bool(results)),
            pendingRestarts=pending,
            suspended=suspended,
            deferred=plan.deferred if plan is not None else "",
        )


def policy_rows(plan: HostPlan | None, *, applied: bool) -> list[dict[str, Any]]:
    """Each rule's usage against its limit: ``usage`` is the host's now (after the plan when it was
    applied or changed nothing, as before when its actions did not run: refused, blocked, deferred,
    suspended), ``planned`` the usage the plan leads to, ``ok`` whether the plan keeps the rule (a
    rule the policy names among its violations is not ok, whether it refused or only warned)."""
    if plan is None or plan.policy is None:
        return []
    broken = {rule.rule for rule in plan.policy.violations}
    rows = []
    for rule in plan.policy.rules:
        usage = rule.after if applied or not plan.actions else rule.before
        rows.append(
            {
                "rule": rule.rule,
                "unit": rule.unit,
                "usage": usage,
                "planned": rule.after,
                "limit": rule.limit,
                "ok": rule.rule not in broken,
            }
        )
    return rows


@dataclass(frozen=True)
class PassRecord:
    """One pass of a lane (or of the loop, when a revision could not be loaded), as ``history``
    shows it: when it ended, its hosts, the revision, why it ran, the result and what it did."""

    time: str
    hosts: list[str]
    revision: str
    trigger: str
    result: str  # applied | unchanged | refused | error | deferred | suspended: the worst of its hosts'
    actions: list[str] = field(default_factory=list)  # "update web1", "start db (failed)"
    message: str = ""
    duration: float = 0.0  # seconds
    count: int = 1  # the passes this entry stands for (identical ones in a row are merged)
    first: str = ""  # when the first of them ended ("" for one pass: ``time``)

    def repeats(self, earlier: PassRecord) -> bool:
        """Whether this pass only says again what ``earlier`` said: the same hosts, revision, result
        and message (a resync finding nothing, a retry meeting the same error)."""
        mine = (self.hosts, self.revision, self.result, self.message)
        return mine == (earlier.hosts, earlier.revision, earlier.result, earlier.message)

    def merged(self, earlier: PassRecord) -> PassRecord:
        """This pass as the newest of ``earlier``'s run of identical passes: counted with them, and
        since when they have been saying it."""
        return replace(self, count=earlier.count + self.count, first=earlier.first or earlier.time)


#: Worst first: a pass of several hosts (a move) shows the worst of their results.
RESULT_ORDER = ("error", "refused", "deferred", "suspended", "applied", "unchanged")


def worst_result(results: Iterable[str]) -> str:
    """The worst of the hosts' results (``error`` before ``refused``, changes that wait before
    ``applied``)."""
    found = set(results)
    return next((result for result in RESULT_ORDER if result in found), "unchanged")


def pass_record(
    revision: str,
    trigger: str,
    verdicts: Mapping[str, HostVerdict],
    results: Mapping[str, Sequence[ActionResult]],
    seconds: float,
) -> PassRecord:
    """A lane's pass as history shows it: its hosts' worst result, what it did, and the message
    (each host's, prefixed with its name when the pass had several)."""
    actions = [
        f"{r.action.kind.value} {r.action.domain}" + ("" if r.ok else " (failed)")
        for host in verdicts
        for r in results.get(host, ())
    ]
    if len(verdicts) == 1:
        message = next(iter(verdicts.values())).message
    else:
        message = "; ".join(f"{host}: {verdict.message}" for host, verdict in verdicts.items())
    result = worst_result(verdict.result for verdict in verdicts.values())
    return PassRecord(now(), list(verdicts), revision, trigger, result, actions, message, round(seconds, 3))


@dataclass(frozen=True)
class PassInProgress:
    """A lane's pass while it runs, as ``inProgress`` shows it."""

    hosts: list[str]
    revision: str
    trigger: str
    started: str


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
        self._history: list[PassRecord] = []  # newest first, at most HISTORY
        self._running: dict[int, PassInProgress] = {}  # by the token pass_started returned
        self._tokens = itertools.count(1)
        self._managed: frozenset[str] | None = None  # None until a revision is taken up: all known

    @classmethod
    def load(cls, path: Path) -> StatusStore:
        """The hosts' status and the history saved by an earlier run (the last applied revision
        survives a crash). What cannot be read starts empty: an older file has no history and no
        domains, and a history entry of another shape is left out."""
        saved: Any = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(path.read_text())
        hosts: dict[str, HostStatus] = {}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            hosts = {name: HostStatus(**fields) for name, fields in saved.get("hosts", {}).items()}
        store = cls(path, hosts)
        with contextlib.suppress(AttributeError):
            store._history = _read_history(saved.get("history"))
        return store

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

    def keep_only(self, managed: Iterable[str]) -> set[str]:
        """A revision was taken up and ``managed`` are the hosts this daemon manages at it: every
        other host is dropped, and later reports of one are ignored; the names dropped."""
        with self._lock:
            self._managed = frozenset(managed)
            dropped = set(self._hosts) - self._managed
            for name in dropped:
                del self._hosts[name]
            return dropped

    def _manages(self, name: str) -> bool:
        """Whether ``name`` may be shown (the lock held): every host before a revision is taken up."""
        return self._managed is None or name in self._managed

    def missing_host(self, name: str, message: str) -> None:
        """A selected host the manifests do not define: an error at the last reconciled revision."""
        with self._lock:
            if not self._manages(name):
                return
            applied = self._hosts.get(name, HostStatus()).appliedRevision
            self._hosts[name] = HostStatus(self._reconciled, "error", applied, message, now())

    def host_reported(
        self, name: str, revision: str, result: str, message: str, report: HostReport, *, ok: bool
    ) -> None:
        """A host's pass ended with ``result``: its status replaced (its applied revision moves to
        ``revision`` when ``ok``, the host now matching it)."""
        with self._lock:
            if not self._manages(name):
                return  # its pass ran while a newer revision dropped it
            applied = revision if ok else self._hosts.get(name, HostStatus()).appliedRevision
            self._hosts[name] = HostStatus(revision, result, applied, message, now(), **asdict(report))

    def pass_started(self, hosts: Sequence[str], revision: str, trigger: str) -> int:
        """A lane's pass begins (shown in ``inProgress`` until :meth:`pass_ended` with the token)."""
        with self._lock:
            token = next(self._tokens)
            self._running[token] = PassInProgress(list(hosts), revision, trigger, now())
            return token

    def pass_ended(self, token: int, record: PassRecord | None = None) -> None:
        """The pass of ``token`` is over; ``record`` (when it got as far as a result) joins the history."""
        with self._lock:
            self._running.pop(token, None)
            if record is not None:
                self._remember(record)

    def record(self, entry: PassRecord) -> None:
        """A pass that ran no lane (the revision could not be loaded, the source failed) joins the history."""
        with self._lock:
            self._remember(entry)

    def _remember(self, entry: PassRecord) -> None:
        """Newest first, at most :data:`HISTORY`; a pass that only repeats its hosts' last entry
        is merged into it (counted, moved to the front), so routine passes and retries meeting the
        same error do not push out what a push did."""
        earlier = next((old for old in self._history if old.hosts == entry.hosts), None)
        if earlier is not None and entry.repeats(earlier):
            self._history.remove(earlier)
            entry = entry.merged(earlier)
        self._history.insert(0, entry)
        del self._history[HISTORY:]

    @property
    def in_progress(self) -> int:
        """How many passes run now."""
        with self._lock:
            return len(self._running)

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

    def every_host_failed(self, hosts: Iterable[str], revision: str, message: str) -> list[str]:
        """Every host known, and those of ``hosts`` still managed, are in error at ``revision``
        (invalid manifests); their names."""
        with self._lock:
            failed = sorted(set(self._hosts) | {name for name in hosts if self._manages(name)})
            self._failed(failed, revision, message)
            return failed

    def hosts_failed(self, hosts: Iterable[str], revision: str, message: str) -> None:
        """``hosts`` are in error at ``revision``, their applied revision kept (a pass that failed)."""
        with self._lock:
            self._failed(hosts, revision, message)

    def _failed(self, hosts: Iterable[str], revision: str, message: str) -> None:
        """``hosts`` in error at ``revision``; what was last known of their domains stays shown."""
        time = now()
        for name in hosts:
            if not self._manages(name):
                continue  # dropped meanwhile: only the history tells of it
            known = self._hosts.get(name, HostStatus())
            self._hosts[name] = replace(known, revision=revision, result="error", message=message, time=time)

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
                "inProgress": [asdict(running) for _, running in sorted(self._running.items())],
                "history": [asdict(entry) for entry in self._history],
            }

    def save(self) -> None:
        """Write the document to :attr:`path`, whole or not at all. Saves (from several host lanes)
        take turns, each writing the document as it is when its turn comes, so the file never goes
        back to an older document."""
        with self._save_lock:
            write_atomically(self.path, json.dumps(self.document(), indent=2))


def _read_history(saved: Any) -> list[PassRecord]:
    """The history entries of a saved document that have :class:`PassRecord`'s shape, newest first."""
    if not isinstance(saved, list):
        return []
    names = {f.name for f in fields(PassRecord)}
    added = {"count", "first"}  # an entry saved before runs were merged lacks them
    entries = []
    for item in saved[:HISTORY]:
        if isinstance(item, dict) and names - added <= set(item) <= names:
            with contextlib.suppress(TypeError, ValueError):
                entries.append(_checked_record(item))
    return entries


def _checked_record(item: dict[str, Any]) -> PassRecord:
    """A saved history entry as a record; a ``TypeError`` when a field has the wrong type."""
    text = ("time", "revision", "trigger", "result", "message")
    lists = ("hosts", "actions")
    if not all(isinstance(item[name], str) for name in text) or not isinstance(item.get("first", ""), str):
        raise TypeError("a text field is not text")
    if not all(
        isinstance(item[name], list) and all(isinstance(v, str) for v in item[name]) for name in lists
    ):
        raise TypeError("a list field is not a list of text")
    count = item.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TypeError("count is not a whole number of 1 or more")
    return PassRecord(**{**item, "duration": float(item["duration"])})
