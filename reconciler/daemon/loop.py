"""The GitOps daemon: keep every selected host equal to the newest commit (or a watched directory).

One loop thread does all reconciling, so there is never more than one reconcile per host at a
time. Everything else only *triggers* it through a queue: the git poller, the webhook, the
directory watcher, libvirt domain events (drift), the periodic resync and the retry timers. Bursts
of triggers are coalesced into one pass, whose work :mod:`~reconciler.daemon.decision` decides. A
pass fetches (when asked to), loads the manifests, and runs the same plan/policy/apply as the CLI
on each host; a refused or failing revision changes nothing and the daemon keeps going. A retryable
error (the source or a host unreachable for now) is retried with backoff; any other waits for the
next revision. SIGTERM ends the pass between two actions.

The HTTP side (:mod:`~reconciler.daemon.http`) runs in its own threads and only reads the status
(:mod:`~reconciler.daemon.status`) or enqueues a trigger.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.decision import HostTask, Trigger, decide, is_idle, needs_fetch
from reconciler.daemon.http import Endpoints, HttpEndpoints
from reconciler.daemon.logs import one_line
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.retries import Retries
from reconciler.daemon.snapshots import SnapshotPublisher
from reconciler.daemon.sources import Source
from reconciler.daemon.status import HostStatus, StatusStore, now
from reconciler.daemon.verdict import HostVerdict, judge
from reconciler.daemon.watchers import DomainWatchers, EventsFactory
from reconciler.engine.apply import ApplySettings, Hooks
from reconciler.engine.reconcile import Connector, Outcome, ReconcileOptions, reconcile
from reconciler.errors import ManifestError, ReconcilerError
from reconciler.files.content_cache import ContentCache
from reconciler.spec.manifests import ManifestSet, load_manifests

log = logging.getLogger("virt_reconcile.daemon.loop")

COALESCE_SECONDS = 0.05
STALL_SECONDS = 300.0  # /healthz fails when the loop has not come round for this long

Watch = Callable[[Path, Callable[[], None], threading.Event], Any]


class Daemon:
    """The reconcile loop plus its triggers and HTTP endpoints; it logs through :mod:`logging`
    (the program running it calls :func:`reconciler.daemon.configure_logging`)."""

    def __init__(
        self,
        config: DaemonConfig,
        source: Source,
        connect: Connector,
        *,
        events: EventsFactory | None = None,
        watch: Watch | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.connect = connect
        self.watch = watch
        self.stop = threading.Event()
        self.triggers: queue.Queue[tuple[Trigger, str | None]] = queue.Queue()
        self.metrics = Metrics()
        self.status = StatusStore.load(config.state_dir / "status.json")
        self.retries = Retries(lambda target: self.trigger(Trigger.RETRY, target))
        self.snapshots = SnapshotPublisher(
            config.state_dir / "snapshots",
            connect,
            copy_to=config.snapshot_to,
            command=config.snapshot_command,
        )
        self.loop_beat = time.monotonic()
        self.manifest_cache = ContentCache.default("manifests")  # both kept between passes
        self.domain_cache = ContentCache.default("domains")
        self.watchers = DomainWatchers(events, lambda host: self.trigger(Trigger.DRIFT, host))
        self._http: HttpEndpoints | None = None

    # -------------------------------------------------------------------------------- triggers

    def trigger(self, kind: Trigger, host: str | None = None) -> None:
        """Ask the loop for a pass (thread-safe; coalesced with others already waiting)."""
        self.triggers.put((kind, host))

    def _poll(self) -> None:
        """Fetch every ``interval`` (jittered, so many daemons do not fetch in step) and resync."""
        last_resync = time.monotonic()
        while not self.stop.wait(self.config.interval * random.uniform(0.9, 1.1)):
            if time.monotonic() - last_resync >= self.config.resync:
                last_resync = time.monotonic()
                self.trigger(Trigger.RESYNC)
            else:
                self.trigger(Trigger.POLL)

    def _next_batch(self) -> list[tuple[Trigger, str | None]]:
        """The triggers of one burst (empty after a quiet second, so the loop checks :attr:`stop`)."""
        try:
            first = self.triggers.get(timeout=1.0)
        except queue.Empty:
            return []
        time.sleep(COALESCE_SECONDS)
        batch = [first]
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self.triggers.get_nowait())
        return batch

    # ------------------------------------------------------------------------------------ loop

    def run(self) -> int:
        """Serve and reconcile until :attr:`stop` is set; return the exit code."""
        self._http = HttpEndpoints(self.config.listen, self._endpoints())
        log.info("virt-reconcile daemon: listening on %s", self._http.url)
        threading.Thread(target=self._poll, name="poll", daemon=True).start()
        if self.source.watchable and self.watch is not None:
            self.watch(self.source.manifests, lambda: self.trigger(Trigger.FILES), self.stop)
        self.trigger(Trigger.START)
        try:
            while not self.stop.is_set():
                self.loop_beat = time.monotonic()
                batch = self._next_batch()
                if batch and not self.stop.is_set():
                    self.reconcile_pass(batch)
        finally:
            self.close()
        log.info("virt-reconcile daemon: stopped")
        return 0

    def close(self) -> None:
        """Cancel pending retries, close the event watchers and the HTTP server."""
        self.retries.cancel_all()
        self.watchers.close()
        if self._http is not None:
            self._http.close()
            self._http = None

    def reconcile_pass(self, batch: Iterable[tuple[Trigger, str | None]]) -> None:
        """One coalesced pass: fetch if asked, load, then reconcile the hosts that need it."""
        triggers = list(batch)
        before = self.status.reconciled_revision
        revision: str | None = before
        if needs_fetch(triggers, before):
            failing = self.status.source_failing
            revision = self._fetch(before)
            if failing and revision is not None:
                triggers.append((Trigger.RETRY, None))  # the source is back: every host again
        if revision is None or is_idle(triggers, before, revision):
            return  # the fetch failed, or a routine poll found nothing new
        try:
            manifests = load_manifests(self.source.manifests, self.manifest_cache)
        except ManifestError as err:
            message = f"manifests invalid at {revision[:12]}: {err}"
            log.warning("%s", one_line(message))
            self.status.every_host_failed(self.config.hosts, revision, message)
            self.status.reconciled(revision)
            self.status.save()
            return
        selected = self._selected(manifests)
        decision = decide(triggers, before, revision, selected)
        # Listen first: a change made while (or right after) this pass reconciles is not missed.
        self.watchers.ensure(manifests, selected)
        if decision.tasks and not self.stop.is_set():
            self._reconcile_hosts(manifests, decision.tasks, revision)
        self.status.reconciled(revision)
        self.status.save()

    def _fetch(self, current: str) -> str | None:
        """Bring the source up to date; on failure report it, retry if that can help, return None."""
        try:
            revision = self.source.update()
        except ReconcilerError as err:
            self.metrics.fetch_failures.inc()
            if err.retryable:
                attempt, delay = self.retries.failed(None)
                message = f"fetch failed (attempt {attempt}): {err}"
                log.warning("%s; retrying in %.1fs", one_line(message), delay)
            else:
                self.retries.forget(None)
                message = f"fetch failed: {err}"
                log.warning("%s; waiting for the next trigger", one_line(message))
            self.status.source_failed(current, message)
            self.status.save()
            return None
        self.retries.forget(None)
        self.status.source_fetched(revision)
        return revision

    def _selected(self, manifests: ManifestSet) -> list[str]:
        """The hosts to keep: all of the manifests', or those configured (a missing one is an error)."""
        if not self.config.hosts:
            return list(manifests.hosts)
        for host in self.config.hosts:
            if host not in manifests.hosts:
                self.status.missing_host(host, "no Host document with this name in the manifests")
        return [h for h in self.config.hosts if h in manifests.hosts]

    def _reconcile_hosts(self, manifests: ManifestSet, tasks: Sequence[HostTask], revision: str) -> None:
        """Reconcile the pass's hosts together (a domain moving between two of them is one move),
        then report each host on its own."""
        started = time.monotonic()
        outcome = reconcile(
            manifests,
            self.connect,
            ReconcileOptions(
                apply=True,
                hosts=tuple(task.host for task in tasks),
                allow_delete=self.config.allow_delete,
                revision=revision,
                root=self.source.identity,
                settings=ApplySettings(shutdown_timeout=self.config.shutdown_timeout),
            ),
            Hooks(stop=self.stop),
            parse_cache=self.domain_cache,
        )
        seconds = time.monotonic() - started
        for task in tasks:
            self._report_host(manifests, task, revision, outcome, seconds)

    def _report_host(
        self, manifests: ManifestSet, task: HostTask, revision: str, outcome: Outcome, seconds: float
    ) -> None:
        """One host's verdict into /status, the metrics, the log and its retry; then its snapshot."""
        plan = outcome.plan.hosts.get(task.host)
        results = outcome.results.get(task.host, [])
        verdict = judge(plan, results, task.reason, outcome.host_errors.get(task.host))
        self.metrics.host_reconciled(task.host, verdict, plan, reason=task.reason, seconds=seconds)
        previous = self.status.host(task.host)
        applied = revision if verdict.ok else previous.appliedRevision
        self.status.set_host(task.host, HostStatus(revision, verdict.result, applied, verdict.message, now()))
        self._after(task, revision, verdict)
        if plan is not None and plan.observed is not None:
            observed = plan.observed if not results else None
            domains = manifests.domains[task.host].values()
            self.snapshots.publish(manifests.hosts[task.host], observed, now(), domains)

    def _after(self, task: HostTask, revision: str, verdict: HostVerdict) -> None:
        """Log the host's result and schedule its retry (a retryable error) or forget it (any other)."""
        line = one_line(
            f"{task.host}: {verdict.result} at {revision[:12]} ({task.reason}): {verdict.message}"
        )
        if verdict.retry:
            attempt, delay = self.retries.failed(task.host)
            log.warning("%s; retry %d in %.1fs", line, attempt, delay)
            return
        self.retries.forget(task.host)
        if verdict.ok:
            log.info("%s", line)
        else:
            log.warning("%s; waiting for a new revision", line)

    # ------------------------------------------------------------------------------------ HTTP

    def _endpoints(self) -> Endpoints:
        return Endpoints(
            alive=lambda: not self.stop.is_set() and time.monotonic() - self.loop_beat < STALL_SECONDS,
            metrics=self.metrics.exposition,
            status=self.status.document,
            on_webhook=lambda: self.trigger(Trigger.WEBHOOK),
            webhook_secret=self.config.webhook_secret,
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where the HTTP endpoints listen (the real port when 0 was asked for)."""
        assert self._http is not None
        return self._http.address
