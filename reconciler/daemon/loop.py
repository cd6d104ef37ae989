"""The GitOps daemon: keep every selected host equal to the newest commit (or a watched directory).

One loop thread does all reconciling, so there is never more than one reconcile per host at a
time. Everything else only *triggers* it through a queue: the git poller, the webhook, the
directory watcher, libvirt domain events (drift) and the periodic resync. Bursts of triggers are
coalesced into one pass. A pass fetches (when asked to), loads the manifests, and runs the same
plan/policy/apply as the CLI on each host; a refused or failing revision changes nothing and the
daemon keeps going, retrying failures with backoff. SIGTERM ends the pass between two actions.

The HTTP side (``/healthz``, ``/metrics``, ``/status``, ``POST /hooks/git``) runs in its own
threads and only reads the status or enqueues a trigger.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import random
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.engine.apply import ApplySettings, Hooks
from reconciler.engine.hypervisor import HostObservation
from reconciler.engine.reconcile import Connector, ReconcileOptions, reconcile
from reconciler.errors import ManifestError, ReconcilerError
from reconciler.files.content_cache import ContentCache
from reconciler.offline.snapshot import Snapshot, snapshot_host
from reconciler.spec.manifests import ManifestSet, load_manifests
from reconciler.spec.models import Host

MAX_BACKOFF = 60.0
COALESCE_SECONDS = 0.05


class Trigger(StrEnum):
    """Why a pass runs."""

    START = "start"
    POLL = "poll"  # the poller's regular fetch: reconciles only when the revision moved
    WEBHOOK = "webhook"
    FILES = "files"
    DRIFT = "drift"  # a libvirt event on a host's domain
    RESYNC = "resync"
    RETRY = "retry"


FETCHING = {Trigger.START, Trigger.POLL, Trigger.WEBHOOK, Trigger.RESYNC, Trigger.RETRY}


class Source(Protocol):
    """Where the manifests come from: ``update()`` brings them up to date and returns the revision."""

    manifests: Path
    watchable: bool

    def update(self) -> str:
        """Fetch (git) or look (directory); return the revision now in ``manifests``."""
        ...


class GitSource:
    """A git URL cloned into the state directory, following one branch."""

    watchable = False

    def __init__(self, url: str, branch: str, path: str, state_dir: Path) -> None:
        from reconciler.adapters.gitsource import GitCheckout

        self.checkout = GitCheckout(url, branch, state_dir / "checkout")
        self.manifests = state_dir / "checkout" / path

    def update(self) -> str:
        """Fetch and check out the branch tip."""
        return self.checkout.update()


class DirectorySource:
    """A plain directory of manifests (no git): its revision is a digest of the files' contents."""

    watchable = True

    def __init__(self, path: Path) -> None:
        self.manifests = path

    def update(self) -> str:
        """A digest of every manifest file's name and content."""
        from reconciler.spec.manifests import manifest_files

        digest = hashlib.sha256()
        for file in manifest_files(self.manifests):
            digest.update(str(file.relative_to(self.manifests)).encode() + b"\0")
            with contextlib.suppress(OSError):
                digest.update(file.read_bytes())
        return "dir:" + digest.hexdigest()[:12]


@dataclass
class HostStatus:
    """What ``/status`` reports for one host."""

    revision: str = ""
    result: str = "pending"  # applied | unchanged | refused | error | pending
    appliedRevision: str = ""
    message: str = ""
    time: str = ""


@dataclass
class DaemonConfig:
    """Everything ``virt-reconcile daemon`` was told."""

    hosts: list[str] = field(default_factory=list)
    interval: float = 30.0
    resync: float = 600.0
    listen: tuple[str, int] = ("127.0.0.1", 9469)
    state_dir: Path = Path("/var/lib/virt-reconcile")
    webhook_secret: bytes | None = None
    allow_delete: bool = False
    shutdown_timeout: float = 60.0
    snapshot_to: Path | None = None  # also copy each host's snapshot into this folder
    snapshot_command: str | None = None  # run this with the snapshot file's path after each write


class Metrics:
    """The daemon's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "virt_reconcile_reconcile_duration_seconds",
            "Time one reconcile of a host took",
            ["host"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.results = Counter(
            "virt_reconcile_reconcile_results_total",
            "Reconciles by result",
            ["host", "result"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "virt_reconcile_last_success_timestamp_seconds",
            "When a host last reconciled without error",
            ["host"],
            registry=self.registry,
        )
        self.drift = Counter(
            "virt_reconcile_drift_corrections_total",
            "Changes made outside git that were put back",
            ["host"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "virt_reconcile_refusals_total",
            "Plans refused by the overcommit policy",
            ["host"],
            registry=self.registry,
        )
        self.usage = Gauge(
            "virt_reconcile_policy_usage",
            "Usage of each overcommit rule (vCPUs or bytes)",
            ["host", "rule"],
            registry=self.registry,
        )
        self.limit = Gauge(
            "virt_reconcile_policy_limit",
            "Limit of each overcommit rule (vCPUs or bytes)",
            ["host", "rule"],
            registry=self.registry,
        )
        self.fetch_failures = Counter(
            "virt_reconcile_fetch_failures_total",
            "Failed fetches of the manifest source",
            registry=self.registry,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Daemon:
    """The reconcile loop plus its triggers and HTTP endpoints."""

    def __init__(
        self,
        config: DaemonConfig,
        source: Source,
        connect: Connector,
        *,
        events: Callable[[Host, Callable[[str, str], None]], Any] | None = None,
        watch: Callable[[Path, Callable[[], None], threading.Event], Any] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.source = source
        self.connect = connect
        self.events_factory = events
        self.watch = watch
        self.log = log
        self.stop = threading.Event()
        self.triggers: queue.Queue[tuple[Trigger, str | None]] = queue.Queue()
        self.metrics = Metrics()
        self.status: dict[str, HostStatus] = {}
        self.source_status: dict[str, str] = {"revision": "", "message": "", "time": ""}
        self.reconciled_revision = ""
        self.loop_beat = time.monotonic()
        self._watchers: dict[str, Any] = {}
        self.manifest_cache = ContentCache.default("manifests")  # both kept between passes
        self.domain_cache = ContentCache.default("domains")
        self._failures = 0
        self._host_failures: dict[str, int] = {}
        self._retry_timers: list[threading.Timer] = []
        self._server: ThreadingHTTPServer | None = None
        self._load_status()

    # -------------------------------------------------------------------------------- triggers

    def trigger(self, kind: Trigger, host: str | None = None) -> None:
        """Ask the loop for a pass (thread-safe; coalesced with others already waiting)."""
        self.triggers.put((kind, host))

    def _retry_later(self, failures: int, host: str | None = None) -> None:
        delay = min(MAX_BACKOFF, 2.0 ** max(failures - 1, 0)) * random.uniform(0.8, 1.2)
        timer = threading.Timer(delay, self.trigger, (Trigger.RETRY, host))
        timer.daemon = True
        timer.start()
        self._retry_timers.append(timer)

    def _poll(self) -> None:
        """Fetch every ``interval`` (jittered, so many daemons do not fetch in step) and resync."""
        last_resync = time.monotonic()
        while not self.stop.wait(self.config.interval * random.uniform(0.9, 1.1)):
            if time.monotonic() - last_resync >= self.config.resync:
                last_resync = time.monotonic()
                self.trigger(Trigger.RESYNC)
            else:
                self.trigger(Trigger.POLL)

    def _on_domain_event(self, host: str) -> Callable[[str, str], None]:
        def on_event(domain: str, what: str) -> None:
            self.trigger(Trigger.DRIFT, host)

        return on_event

    # ------------------------------------------------------------------------------------ loop

    def run(self) -> int:
        """Serve and reconcile until :attr:`stop` is set; return the exit code."""
        self._serve()
        threading.Thread(target=self._poll, name="poll", daemon=True).start()
        if self.source.watchable and self.watch is not None:
            self.watch(self.source.manifests, lambda: self.trigger(Trigger.FILES), self.stop)
        self.trigger(Trigger.START)
        try:
            while not self.stop.is_set():
                self.loop_beat = time.monotonic()
                try:
                    first = self.triggers.get(timeout=1.0)
                except queue.Empty:
                    continue
                time.sleep(COALESCE_SECONDS)
                batch = [first]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(self.triggers.get_nowait())
                if self.stop.is_set():
                    break
                self.reconcile_pass(batch)
        finally:
            for timer in self._retry_timers:
                timer.cancel()
            for watcher in self._watchers.values():
                with contextlib.suppress(Exception):
                    watcher.close()
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
        self.log("virt-reconcile daemon: stopped")
        return 0

    def reconcile_pass(self, batch: Iterable[tuple[Trigger, str | None]]) -> None:
        """One coalesced pass: fetch if asked, load, then reconcile the hosts that need it."""
        kinds = {kind for kind, _ in batch}
        drifted = {host for kind, host in batch if kind in (Trigger.DRIFT, Trigger.RETRY) and host}
        revision = self.reconciled_revision
        if kinds & FETCHING or kinds & {Trigger.FILES} or not revision:
            try:
                revision = self.source.update()
            except ReconcilerError as err:
                self._failures += 1
                self.metrics.fetch_failures.inc()
                self._report_source(revision, f"fetch failed (attempt {self._failures}): {err}")
                self._retry_later(self._failures)
                return
            self._failures = 0
            self._report_source(revision, "")
        moved = revision != self.reconciled_revision
        if not moved and kinds <= {Trigger.POLL}:
            return  # a routine poll that found nothing new
        try:
            manifests = load_manifests(self.source.manifests, self.manifest_cache)
        except ManifestError as err:
            self._report_all(revision, "error", f"manifests invalid at {revision[:12]}: {err}")
            self.reconciled_revision = revision
            return
        hosts = self._selected(manifests)
        if not moved and not kinds & (FETCHING | {Trigger.FILES}) - {Trigger.POLL}:
            hosts = [host for host in hosts if host in drifted]  # drift: only the hosts it touched
        # Listen first: a change made while (or right after) this pass reconciles is not missed.
        self._ensure_watchers(manifests)
        for host in hosts:
            if self.stop.is_set():
                break
            self._reconcile_host(manifests, host, revision, drift=not moved and host in drifted)
        self.reconciled_revision = revision
        self._save_status()

    def _selected(self, manifests: ManifestSet) -> list[str]:
        if not self.config.hosts:
            return list(manifests.hosts)
        missing = [h for h in self.config.hosts if h not in manifests.hosts]
        for host in missing:
            self.status[host] = HostStatus(
                revision=self.reconciled_revision,
                result="error",
                appliedRevision=self.status.get(host, HostStatus()).appliedRevision,
                message="no Host document with this name in the manifests",
                time=_now(),
            )
        return [h for h in self.config.hosts if h in manifests.hosts]

    def _reconcile_host(self, manifests: ManifestSet, host: str, revision: str, *, drift: bool) -> None:
        started = time.monotonic()
        outcome = reconcile(
            manifests,
            self.connect,
            ReconcileOptions(
                apply=True,
                hosts=(host,),
                allow_delete=self.config.allow_delete,
                revision=revision,
                settings=ApplySettings(shutdown_timeout=self.config.shutdown_timeout),
            ),
            Hooks(stop=self.stop),
            parse_cache=self.domain_cache,
        )
        self.metrics.duration.labels(host).observe(time.monotonic() - started)
        plan = outcome.plan.hosts.get(host)
        results = outcome.results.get(host, [])
        previous = self.status.get(host, HostStatus())
        failed = [r for r in results if not r.ok]
        if plan is None or plan.errors or plan.conflicts or failed:
            problems = [
                *(plan.errors if plan else []),
                *(f"conflict: {c.domain}: {c.reason}" for c in (plan.conflicts if plan else [])),
                *(r.detail for r in failed),
            ]
            result, message = "error", "; ".join(problems) or "reconcile failed"
            failures = self._host_failures.get(host, 0) + 1
            self._host_failures[host] = failures
            self._retry_later(failures, host)
        elif plan.refused:
            assert plan.policy is not None
            result = "refused"
            message = "; ".join(rule.message() for rule in plan.policy.violations)
            self.metrics.refusals.labels(host).inc()
        else:
            self._host_failures.pop(host, None)
            result = "applied" if results else "unchanged"
            done = ", ".join(f"{r.action.kind.value} {r.action.domain}" for r in results)
            message = f"{len(results)} action(s): {done}" if results else "no changes"
            self.metrics.last_success.labels(host).set(time.time())
            if drift and results:
                self.metrics.drift.labels(host).inc(len(results))
                message = f"drift corrected: {message}"
        applied = revision if result in ("applied", "unchanged") else previous.appliedRevision
        self.status[host] = HostStatus(revision, result, applied, message, _now())
        self.metrics.results.labels(host, result).inc()
        if plan is not None and plan.policy is not None:
            for rule in plan.policy.rules:
                self.metrics.usage.labels(host, rule.rule).set(
                    rule.after if result != "refused" else rule.before
                )
                self.metrics.limit.labels(host, rule.rule).set(rule.limit)
        self.log(f"{host}: {result} at {revision[:12]}: {message}")
        if plan is not None and plan.observed is not None:
            self._write_snapshot(manifests.hosts[host], plan.observed if not results else None)

    def _write_snapshot(self, host: Host, observed: HostObservation | None) -> None:
        """The host's state after this pass into ``state-dir/snapshots/HOST.json``, then publish it.

        CI jobs plan pull requests against these files (``plan --state``) without hypervisor access.
        """
        try:
            if observed is None:  # something was applied: what the plan saw is history now
                with self.connect(host, False) as hypervisor:
                    observed = hypervisor.observe()
            snapshot = Snapshot(taken_at=_now(), hosts={host.name: snapshot_host(host.spec.uri, observed)})
            folder = self.config.state_dir / "snapshots"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{host.name}.json"
            fd, temp = tempfile.mkstemp(prefix=f".{host.name}.", dir=folder)
            with os.fdopen(fd, "w") as handle:
                handle.write(snapshot.model_dump_json(by_alias=True, indent=2) + "\n")
            os.replace(temp, path)
            if self.config.snapshot_to is not None:
                self.config.snapshot_to.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, self.config.snapshot_to / path.name)
            if self.config.snapshot_command:
                subprocess.run(
                    [*shlex.split(self.config.snapshot_command), str(path)], check=True, timeout=120
                )
        except (ReconcilerError, OSError, subprocess.SubprocessError) as err:
            self.log(f"{host.name}: snapshot not published: {err}")

    def _ensure_watchers(self, manifests: ManifestSet) -> None:
        """Listen to domain events on every real (non-sandbox) host, re-opening lost connections."""
        if self.events_factory is None:
            return
        for name in self._selected(manifests):
            host = manifests.hosts[name]
            if host.spec.address.is_sandbox:
                continue  # the sandbox lives in this process only while a reconcile runs
            watcher = self._watchers.get(name)
            if watcher is None:
                watcher = self._watchers[name] = self.events_factory(host, self._on_domain_event(name))
            watcher.ensure()

    # ---------------------------------------------------------------------------------- status

    def _report_source(self, revision: str, message: str) -> None:
        self.source_status = {"revision": revision, "message": message, "time": _now()}
        if message:
            self.log(message)
            for status in self.status.values():
                status.message, status.time = message, self.source_status["time"]
                status.result = "error"
            self._save_status()

    def _report_all(self, revision: str, result: str, message: str) -> None:
        self.log(message)
        for host in set(self.status) | set(self.config.hosts):
            previous = self.status.get(host, HostStatus())
            self.status[host] = HostStatus(revision, result, previous.appliedRevision, message, _now())
        self._save_status()

    def status_document(self) -> dict[str, Any]:
        """The ``/status`` JSON."""
        return {
            "hosts": {name: asdict(status) for name, status in sorted(self.status.items())},
            "source": dict(self.source_status),
            "reconciledRevision": self.reconciled_revision,
        }

    def _status_file(self) -> Path:
        return self.config.state_dir / "status.json"

    def _save_status(self) -> None:
        """Keep the status across restarts (the last applied revision survives a crash)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".status.", dir=self.config.state_dir)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.status_document(), handle, indent=2)
        os.replace(temp, self._status_file())

    def _load_status(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            saved = json.loads(self._status_file().read_text())
            self.status = {name: HostStatus(**fields) for name, fields in saved.get("hosts", {}).items()}

    # ------------------------------------------------------------------------------------ HTTP

    def _serve(self) -> None:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "virt-reconcile"

            def log_message(self, format: str, *args: Any) -> None:
                """Requests are not logged: /metrics is scraped every few seconds."""

            def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    alive = not daemon.stop.is_set() and time.monotonic() - daemon.loop_beat < 300
                    self._send(200 if alive else 503, b"ok\n" if alive else b"stopped\n", "text/plain")
                elif path == "/metrics":
                    self._send(200, generate_latest(daemon.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/status":
                    self._send(200, json.dumps(daemon.status_document(), indent=2).encode() + b"\n")
                else:
                    self._send(404, b'{"error": "not found"}\n')

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != "/hooks/git" or daemon.config.webhook_secret is None:
                    self._send(404, b'{"error": "not found"}\n')
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                signature = self.headers.get("X-Hub-Signature-256", "")
                expected = (
                    "sha256=" + hmac.new(daemon.config.webhook_secret, body, hashlib.sha256).hexdigest()
                )
                if not hmac.compare_digest(signature.encode(), expected.encode()):
                    self._send(401, b'{"error": "bad signature"}\n')
                    return
                daemon.trigger(Trigger.WEBHOOK)
                self._send(202, b'{"accepted": true}\n')

        self._server = ThreadingHTTPServer(self.config.listen, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
        host, port = self.address
        self.log(f"virt-reconcile daemon: listening on http://{host}:{port}")

    @property
    def address(self) -> tuple[str, int]:
        """Where the HTTP endpoints listen (the real port when 0 was asked for)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` (a bare number is seconds) -> seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9469`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
