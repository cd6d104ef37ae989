"""The GitOps daemon: keep every selected host equal to the newest commit (or a watched directory).

One loop thread decides all work; everything else only *triggers* it through a queue: the git
poller, the webhook, the directory watcher, libvirt domain events (drift), the periodic resync, the
retry timers and the wake-ups of hosts whose sync window opens (:mod:`~reconciler.daemon.wakeups`).
Bursts of triggers are coalesced into one pass, whose work :mod:`~reconciler.daemon.decision`
decides. A pass fetches (when asked to), loads the manifests and hands each host that needs it to
that host's lane (:mod:`~reconciler.daemon.lanes`), which runs the same plan/policy/apply as the
CLI: never two reconciles of one host at a time, and a slow host holds up no other. A refused or
failing revision changes nothing and the daemon keeps going. A retryable error (the source or a
host unreachable for now) is retried with backoff; any other waits for the next revision. SIGTERM
ends the pass between two actions.

Nothing in a revision can end the daemon: any error met while loading or reconciling it (a bug's
``ValueError``, an ``OverflowError``, a ``RecursionError`` or ``MemoryError`` from a pathological
manifest) is that revision's error, reported in ``/status`` and the log like invalid manifests: the
last good revision stays applied, and only a new revision (or a resync, or drift) tries again.
Manifests load in a thread of their own, so a load that hangs costs its time budget
(``load_timeout``), not the loop, and SIGTERM is honoured within a fraction of a second meanwhile.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.adapters.gitsource import without_credentials
from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.dashboard import render as render_dashboard
from reconciler.daemon.decision import HostTask, Trigger, decide, is_idle, needs_fetch
from reconciler.daemon.http import Endpoints, HttpEndpoints, exposure_warning
from reconciler.daemon.lanes import HostLanes, LaneJob
from reconciler.daemon.loader import ManifestLoader
from reconciler.daemon.logs import Once, one_line
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.notify import Notifier
from reconciler.daemon.retries import Retries, backoff_delay
from reconciler.daemon.snapshots import SnapshotPublisher
from reconciler.daemon.sources import Source, revision_answers
from reconciler.daemon.status import HostReport, PassRecord, StatusStore, now, pass_record
from reconciler.daemon.verdict import HostVerdict, judge
from reconciler.daemon.wakeups import Wakeups, next_boundary
from reconciler.daemon.watchers import DomainWatchers, EventsFactory
from reconciler.engine.apply import ApplySettings, Hooks
from reconciler.engine.reconcile import Connector, Outcome, ReconcileOptions, reconcile
from reconciler.engine.syncstate import domain_states
from reconciler.errors import ManifestError, ManifestTimeoutError, ReconcilerError, RevisionRefusedError
from reconciler.files.content_cache import ContentCache
from reconciler.spec.manifests import ManifestSet

log = logging.getLogger("virt_reconcile.daemon.loop")

COALESCE_SECONDS = 0.05
STALL_SECONDS = 300.0  # /healthz fails when the loop has not come round for this long
MESSAGE_CHARS = 300  # an unexpected error's text in /status and the log is cut to this
LANE_GRACE_SECONDS = 10.0  # on stop, lanes get the shutdown timeout plus this to end their pass
NOTIFY_GRACE_SECONDS = 5.0  # on stop, queued notifications get this long to go out

Watch = Callable[[Path, Callable[[], None], threading.Event], Any]


def describe(err: BaseException) -> str:
    """An unexpected error in one line: its class and the start of its text (``MemoryError`` has none)."""
    text = one_line(str(err))
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
        self.retries = Retries(
            lambda target: self.trigger(Trigger.RETRY, target),
            lambda attempt: backoff_delay(attempt, base=config.retry_base, cap=config.retry_cap),
        )
        self.wakeups = Wakeups(lambda host: self.trigger(Trigger.WINDOW, host))
        self.loader = ManifestLoader()
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
        self.lanes = HostLanes(self._lane_pass, parallel=config.host_parallel, stop=self.stop)
        self.notifier = Notifier(config.notify, self.metrics.registry)  # queues only: never waits
        self._said = Once()  # conditions that last (a source error, an unknown host): logged once
        self._http: HttpEndpoints | None = None

    # -------------------------------------------------------------------------------- triggers

    def trigger(self, kind: Trigger, host: str | None = None) -> None:
        """Ask the loop for a pass (thread-safe; coalesced with others already waiting)."""
        self.triggers.put((kind, host))

    def _poll(self) -> None:
        """Fetch every ``interval`` (jittered, so many daemons do not fetch in step) and resync every
        ``resync``, whichever is due first (a resync fetches too, so it also counts as a poll)."""
        started = time.monotonic()
        next_poll, next_resync = started + self._jittered_interval(), started + self.config.resync
        while not self.stop.wait(max(0.0, min(next_poll, next_resync) - time.monotonic())):
            moment = time.monotonic()
            if moment >= next_resync:
                self.trigger(Trigger.RESYNC)
                next_resync, next_poll = moment + self.config.resync, moment + self._jittered_interval()
            elif moment >= next_poll:
                self.trigger(Trigger.POLL)
                next_poll = moment + self._jittered_interval()

    def _jittered_interval(self) -> float:
        """The interval ±10%, so many daemons started together do not fetch in step."""
        return self.config.interval * random.uniform(0.9, 1.1)

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
        self._http = HttpEndpoints(self.config.listen, self._endpoints(), self.config.http)
        log.info("virt-reconcile daemon: listening on %s", self._http.url)
        exposed = exposure_warning(self.config.listen[0], self.config.webhook_secret is not None)
        if exposed is not None:
            log.warning("%s", exposed)
        threading.Thread(target=self._poll, name="poll", daemon=True).start()
        if self.source.watchable and self.watch is not None:
            self.watch(self.source.manifests, lambda: self.trigger(Trigger.FILES), self.stop)
        self.trigger(Trigger.START)
        try:
            while not self.stop.is_set():
                self.loop_beat = time.monotonic()
                batch = self._next_batch()
                if batch and not self.stop.is_set():
                    self._guarded_pass(batch)
        finally:
            self.close()
        log.info("virt-reconcile daemon: stopped")
        return 0

    def close(self) -> None:
        """Let the lanes end their passes (between two actions), cancel pending retries, close the
        event watchers and the HTTP server; queued notifications get a few seconds to go out."""
        self.stop.set()
        self.lanes.close(timeout=self.config.shutdown_timeout + LANE_GRACE_SECONDS)
        self.retries.cancel_all()
        self.wakeups.cancel_all()
        self.watchers.close()
        self.notifier.close(timeout=NOTIFY_GRACE_SECONDS)
        if self._http is not None:
            self._http.close()
            self._http = None

    def _guarded_pass(self, batch: Iterable[tuple[Trigger, str | None]]) -> None:
        """A pass that cannot end the loop: an error :meth:`reconcile_pass` did not report itself
        (``status.json`` not written: the disk is full) is logged, and the loop goes on."""
        try:
            self.reconcile_pass(batch)
        except Exception as err:
            log.error("pass failed: %s", describe(err))

    def reconcile_pass(self, batch: Iterable[tuple[Trigger, str | None]]) -> None:
        """One coalesced pass: fetch if asked, load, then reconcile the hosts that need it.

        Any error met loading or reconciling the revision is reported as that revision's error.
        """
        triggers = list(batch)
        before = self.status.reconciled_revision
        revision: str | None = before
        if needs_fetch(triggers, before):
            failing = self.status.source_failing
            revision = self._fetch(before)
            if failing and revision is not None:
                triggers.append((Trigger.RETRY, None))  # the source is back: every host again
            if revision is None:  # the source is down: a host's retry or drift still runs, as before
                triggers = [(kind, host) for kind, host in triggers if host is not None]
                revision = before if triggers and before else None
        if revision is None or is_idle(triggers, before, revision):
            return  # the fetch failed, or a routine poll found nothing new
        manifests = self._load(revision, ", ".join(dict.fromkeys(kind.value for kind, _ in triggers)))
        if manifests is None:
            return  # reported, or the daemon stops
        self.metrics.revision_loaded(ok=True)
        self._keep_only(manifests)
        selected = self._selected(manifests, revision)
        decision = decide(triggers, before, revision, selected)
        try:
            self.watchers.keep(manifests, selected)  # each lane listens on its host before its pass
        except Exception as err:
            log.warning("domain events not watched at %s: %s", revision[:12], describe(err))
        if not self.stop.is_set():
            for task in decision.tasks:
                self.lanes.submit(task.host, LaneJob(manifests, revision, task.reason))
        self.status.reconciled(revision)
        self.status.save()

    def _load(self, revision: str, trigger: str) -> ManifestSet | None:
        """The manifests at ``revision``; None when they cannot be used (reported) or on stop."""
        try:
            return self.loader.load(self.source.manifests, self.manifest_cache, self.config, self.stop)
        except ManifestError as err:
            message = f"manifests invalid at {revision[:12]}: {err}"
        except ManifestTimeoutError as err:
            message = f"manifests not loaded at {revision[:12]}: {err}"
        except Exception as err:
            message = f"manifests not loaded at {revision[:12]}: {describe(err)}"
        self._revision_failed(revision, message, self.config.hosts, trigger=trigger)
        return None

    def _revision_failed(
        self, revision: str, message: str, hosts: Sequence[str], *, every: bool = True, trigger: str = ""
    ) -> None:
        """``revision`` cannot be applied: ``hosts`` (and with ``every``, every host known) report
        ``message``; it counts as reconciled, so routine polls do not load it again (no retry storm).
        It is an error in the history and the metrics (a broken repository is worth an alert)."""
        log.warning("%s", one_line(message), extra={"revision": revision})
        for host in hosts:
            self.retries.forget(host)  # a retry would meet the same error
        if every:
            hosts = self.status.every_host_failed(hosts, revision, message)
        else:
            self.status.hosts_failed(hosts, revision, message)
        self.metrics.revision_loaded(ok=False)
        self.status.record(PassRecord(now(), list(hosts), revision, trigger, "error", [], one_line(message)))
        self.status.reconciled(revision, message)
        self.status.save()
        self.notifier.revision_failed(revision, message, () if every else hosts)

    def _fetch(self, current: str) -> str | None:
        """Bring the source up to date; on failure report it, retry if that can help, return None."""
        try:
            revision = self.source.update()
        except Exception as err:  # a bug's error, too, is the source's: the loop goes on
            self.metrics.fetch_failures.inc()
            text = without_credentials(str(err) if isinstance(err, ReconcilerError) else describe(err))
            if isinstance(err, ReconcilerError) and err.retryable:
                attempt, delay = self.retries.failed(None)
                message = f"fetch failed (attempt {attempt}): {text}"
                self._source_failed(current, text, f"{one_line(message)}; retrying in {delay:.1f}s")
            else:
                self.retries.forget(None)
                message = f"fetch failed: {text}"
                refused = isinstance(err, RevisionRefusedError)
                line = f"{one_line(message)}; waiting for the next trigger"
                self._source_failed(current, text, line, refused=refused)
            self.status.source_failed(current, message)
            self.status.save()
            return None
        self.retries.forget(None)
        if self._said.clear("source"):
            log.info(
                "source: fetched %s, the source error is over", revision[:12], extra={"revision": revision}
            )
        self.status.source_fetched(revision)
        return revision

    def _source_failed(self, current: str, reason: str, line: str, *, refused: bool = False) -> None:
        """Log a source error once while its reason stays the same (not at every poll), and keep it
        in the history; a refused revision counts as a manifest error too."""
        if not self._said.new("source", one_line(reason)):
            log.debug("%s", line)
            return
        log.warning("%s", line, extra={"revision": current})
        if refused:
            self.metrics.revision_loaded(ok=False)
        self.status.record(PassRecord(now(), [], current, "fetch", "error", [], line))

    def _selected(self, manifests: ManifestSet, revision: str) -> list[str]:
        """The hosts to keep: all of the manifests', or those configured by name and by labels (a
        name the manifests lack is an error, logged once per revision)."""
        for host in self.config.hosts:
            if host in manifests.hosts:
                self._said.clear(f"host {host}")
                continue
            self.status.missing_host(host, "no Host document with this name in the manifests")
            if self._said.new(f"host {host}", revision):
                log.warning(
                    "--host %s: no Host document with this name in the manifests at %s",
                    host,
                    revision[:12],
                    extra={"host": host, "revision": revision},
                )
        kept = [name for name in self.config.hosts or manifests.hosts if self._keeps(manifests, name)]
        if not kept and self.config.selector and self._said.new("selector", revision):
            log.warning(
                "no host of the manifests matches the selector %r: nothing to keep", str(self.config.selector)
            )
        return kept

    def _keeps(self, manifests: ManifestSet, name: str) -> bool:
        """Whether this daemon was told to keep host ``name`` (by ``--host`` and ``--selector``)."""
        if name not in manifests.hosts or (self.config.hosts and name not in self.config.hosts):
            return False
        return self.config.selector.matches(manifests.hosts[name].metadata.labels)

    def _keep_only(self, manifests: ManifestSet) -> None:
        """Forget the hosts not managed at ``manifests`` (relabelled out, removed, renamed; a --host
        they lack stays, in error): out of /status and the metrics, waiting jobs, retries, wake-ups."""
        names = self.config.hosts or manifests.hosts
        kept = {name for name in names if name not in manifests.hosts or self._keeps(manifests, name)}
        for host in self.lanes.keep(kept) | self.status.keep_only(kept) | self.metrics.keep_only(kept):
            self.retries.forget(host)
            self.wakeups.forget(host)

    def _lane_pass(self, jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        """A lane's pass: reconcile its host (and the peers of a move, when asked) together, report
        each host on its own; the hosts beyond these that held moves need. Whatever it raises is
        these hosts' error at this revision: the lane, like the loop, goes on."""
        first = next(iter(jobs.values()))
        revision, hosts, trigger = first.revision, list(jobs), first.reason.value
        running = self.status.pass_started(hosts, revision, trigger)  # in /status's inProgress
        self.metrics.in_progress.inc()
        try:
            return self._reconcile_hosts(jobs)
        except Exception as err:
            message = f"reconcile failed at {revision[:12]}: {describe(err)}"
            log.warning("%s", one_line(message), extra={"hosts": hosts, "revision": revision})
            for host in hosts:
                self.retries.forget(host)
            self.status.hosts_failed(hosts, revision, message)
            self.status.record(PassRecord(now(), hosts, revision, trigger, "error", [], one_line(message)))
            with contextlib.suppress(Exception):  # e.g. the disk is full: /status still shows it
                self.status.save()
            return frozenset()
        finally:
            self.status.pass_ended(running)
            self.metrics.in_progress.dec()

    def _reconcile_hosts(self, jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        """Reconcile hosts together (a domain moving between two of them is one move), then report
        each host on its own; return the hosts held moves need beside these."""
        first = next(iter(jobs.values()))
        manifests, revision = first.manifests, first.revision
        for host in jobs:
            # Listen first: a change made while (or right after) this pass reconciles is not missed.
            self.watchers.listen(manifests.hosts[host])
        started, moment = time.monotonic(), self.config.clock()
        outcome = reconcile(
            manifests,
            self.connect,
            ReconcileOptions(
                apply=True,
                hosts=tuple(jobs),
                allow_delete=self.config.allow_delete,
                revision=revision,
                root=self.source.identity,
                contained_revisions=revision_answers(
                    self.source, revision, lambda: self.trigger(Trigger.POLL)
                ),
                settings=ApplySettings(shutdown_timeout=self.config.shutdown_timeout),
                host_parallel=self.config.host_parallel,
                now=moment,
            ),
            Hooks(stop=self.stop),
            parse_cache=self.domain_cache,
        )
        seconds = time.monotonic() - started
        verdicts = {
            host: self._report_host(manifests, HostTask(host, job.reason), revision, outcome, seconds)
            for host, job in jobs.items()
        }
        for host, verdict in verdicts.items():
            self._wake_when_open(manifests, host, verdict, moment)
        self.status.record(pass_record(revision, first.reason.value, verdicts, outcome.results, seconds))
        self.status.save()
        # A move's other host joins only when this daemon keeps it: one told to leave a host alone
        # never writes it, and holds the move (as ``apply --host`` does).
        return frozenset(
            held.peer
            for plan in outcome.plan.hosts.values()
            for held in plan.held
            if held.peer and self._keeps(manifests, held.peer)
        )

    def _report_host(
        self, manifests: ManifestSet, task: HostTask, revision: str, outcome: Outcome, seconds: float
    ) -> HostVerdict:
        """One host's verdict, with each domain's state, into /status, the metrics, the log and its
        retry; then its snapshot. The verdict is returned for the pass's history."""
        plan = outcome.plan.hosts.get(task.host)
        results = outcome.results.get(task.host, [])
        verdict = judge(plan, results, task.reason, outcome.host_errors.get(task.host))
        states = domain_states(plan, results, manifests.domains.get(task.host, {})) if plan else {}
        self.metrics.host_reconciled(
            task.host, verdict, plan, reason=task.reason, seconds=seconds, states=states
        )
        suspended = manifests.hosts[task.host].suspended
        report = HostReport.of(plan, results, states, suspended=suspended)
        self.status.host_reported(task.host, revision, verdict.result, verdict.message, report, ok=verdict.ok)
        self._after(task, revision, verdict)
        self.notifier.host_verdict(task.host, revision, verdict, task.reason, results)
        if plan is not None and plan.observed is not None:
            observed = plan.observed if not results else None
            domains = manifests.domains[task.host].values()
            try:  # the host's verdict stands whatever happens to its snapshot
                self.snapshots.publish(manifests.hosts[task.host], observed, now(), domains)
            except Exception as err:
                log.warning("%s: snapshot not published: %s", task.host, describe(err))
        return verdict

    def _wake_when_open(
        self, manifests: ManifestSet, host: str, verdict: HostVerdict, moment: datetime
    ) -> None:
        """A deferred host is woken at its next window boundary; any other forgets its wake-up."""
        windows = manifests.hosts[host].spec.sync_windows
        boundary = next_boundary(windows, moment) if verdict.result == "deferred" else None
        if boundary is None:
            self.wakeups.forget(host)
            return
        delay = self.wakeups.at(host, boundary, moment)
        log.debug("%s: waking in %.0fs, when its sync window may open", host, delay, extra={"host": host})

    def _after(self, task: HostTask, revision: str, verdict: HostVerdict) -> None:
        """Log the host's result and schedule its retry (a retryable error) or forget it (any other).
        A verdict that is no news (a refusal or a deferral met again by a resync or drift pass at the
        same revision) is logged at debug level only: once per host, revision and condition."""
        line = one_line(
            f"{task.host}: {verdict.result} at {revision[:12]} ({task.reason}): {verdict.message}"
        )
        fields = {"host": task.host, "revision": revision, "result": verdict.result}
        subject = f"verdict {task.host}"
        if verdict.retry:
            self._said.clear(subject)  # each retry is logged, with its attempt
            attempt, delay = self.retries.failed(task.host)
            log.warning("%s; retry %d in %.1fs", line, attempt, delay, extra=fields)
            return
        self.retries.forget(task.host)
        if verdict.ok:
            self._said.clear(subject)
            log.info("%s", line, extra=fields)
        elif not self._said.new(subject, f"{revision} {verdict.condition}"):
            log.debug("%s (as before)", line, extra=fields)
        elif verdict.result in ("deferred", "suspended"):
            log.info("%s", line, extra=fields)
        else:
            log.warning("%s; waiting for a new revision", line, extra=fields)

    # ------------------------------------------------------------------------------------ HTTP

    def _endpoints(self) -> Endpoints:
        return Endpoints(
            alive=lambda: not self.stop.is_set() and time.monotonic() - self.loop_beat < STALL_SECONDS,
            metrics=self.metrics.exposition,
            status=self.status.document,
            on_webhook=lambda: self.trigger(Trigger.WEBHOOK),
            webhook_secret=self.config.webhook_secret,
            dashboard=render_dashboard,
        )

    @property
    def address(self) -> tuple[str, int]:
        """Where the HTTP endpoints listen (the real port when 0 was asked for)."""
        assert self._http is not None
        return self._http.address
