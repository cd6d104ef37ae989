"""The daemon's Prometheus metrics, in a registry of its own (served at ``/metrics``).

Beside each host's reconciles: its domains per sync state (``virt_reconcile_domains{host,sync}``,
every state set, zeros included, so a state that empties goes to 0), its orphans and pending
restarts, the passes running now, and whether the manifests load (``virt_reconcile_revision_ok``,
``virt_reconcile_manifest_errors_total``): a broken repository is something to alert on.

Only the hosts the daemon manages are exported: a host dropped when a revision is taken up
(relabelled out of the selector, removed from git, renamed) loses every series of its
(:meth:`Metrics.keep_only`), so no alert fires for a host nobody keeps any more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from reconciler.daemon.decision import Reason
from reconciler.daemon.verdict import HostVerdict
from reconciler.engine.plan import HostPlan
from reconciler.engine.syncstate import DomainState, Sync, sync_counts

M = TypeVar("M", bound=MetricWrapperBase)


class Metrics:
    """Every metric the daemon exports; :meth:`host_reconciled` records one host's reconcile."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()  # lanes record while the loop drops hosts
        self._managed: frozenset[str] | None = None  # None until a revision is taken up: every host
        self._series: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}  # host -> labelled
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
        self.retries = Counter(
            "virt_reconcile_retries_total",
            "Reconciles of a host retried after a temporary error",
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
        self._domain_gauges()
        self._revision_gauges()

    def _domain_gauges(self) -> None:
        """Per host: domains per sync state, orphans, pending restarts."""
        self.domains = Gauge(
            "virt_reconcile_domains",
            "Managed domains per sync state: synced, outOfSync, orphan, pendingRestart, refused, "
            "suspended, error",
            ["host", "sync"],
            registry=self.registry,
        )
        self.orphans = Gauge(
            "virt_reconcile_orphans",
            "Managed domains no longer in git and still defined",
            ["host"],
            registry=self.registry,
        )
        self.pending_restarts = Gauge(
            "virt_reconcile_pending_restarts",
            "Running domains whose changed definition waits for a restart",
            ["host"],
            registry=self.registry,
        )

    def _revision_gauges(self) -> None:
        """Failed fetches, whether the manifests load (and how often not), the passes running now."""
        self.fetch_failures = Counter(
            "virt_reconcile_fetch_failures_total",
            "Failed fetches of the manifest source",
            registry=self.registry,
        )
        self.manifest_errors = Counter(
            "virt_reconcile_manifest_errors_total",
            "Revisions whose manifests could not be used (invalid, failed to load, or refused)",
            registry=self.registry,
        )
        self.revision_ok = Gauge(
            "virt_reconcile_revision_ok",
            "1 when the newest revision's manifests loaded, 0 when they are invalid or it was refused",
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "virt_reconcile_passes_in_progress",
            "Host passes running now",
            registry=self.registry,
        )

    def host_reconciled(
        self,
        host: str,
        verdict: HostVerdict,
        plan: HostPlan | None,
        *,
        reason: Reason,
        seconds: float,
        states: Mapping[str, DomainState] | None = None,
    ) -> None:
        """Record one reconcile of ``host``: its time, result, why it ran, its policy's usage and,
        with ``states``, its domains per sync state. A host no longer managed (its pass ran while a
        newer revision dropped it) records nothing."""
        with self._lock:
            if self._managed is not None and host not in self._managed:
                return
            self._of(self.duration, host).observe(seconds)
            self._of(self.results, host, verdict.result).inc()
            if verdict.ok:
                self._of(self.last_success, host).set(time.time())
            if verdict.drift_corrections:
                self._of(self.drift, host).inc(verdict.drift_corrections)
            if reason is Reason.RETRY:
                self._of(self.retries, host).inc()
            if verdict.result == "refused":
                self._of(self.refusals, host).inc()
            if plan is not None and plan.policy is not None:
                applied = verdict.result == "applied" or not plan.actions  # else nothing changed yet
                for rule in plan.policy.rules:
                    self._of(self.usage, host, rule.rule).set(rule.after if applied else rule.before)
                    self._of(self.limit, host, rule.rule).set(rule.limit)
            if states is not None:
                self._domains_seen(host, states)

    def _domains_seen(self, host: str, states: Mapping[str, DomainState]) -> None:
        """Set ``host``'s domain gauges from its domains' sync states (the lock held)."""
        counts = sync_counts(states)
        for sync, count in counts.items():
            self._of(self.domains, host, sync.value).set(count)
        self._of(self.orphans, host).set(counts[Sync.ORPHAN])
        self._of(self.pending_restarts, host).set(counts[Sync.PENDING_RESTART])

    def _of(self, metric: M, host: str, *rest: str) -> M:
        """``metric``'s series for ``host`` (and ``rest``), remembered so that :meth:`keep_only` can
        remove it (the lock held)."""
        self._series.setdefault(host, set()).add((metric, (host, *rest)))
        return metric.labels(host, *rest)

    def keep_only(self, managed: Iterable[str]) -> set[str]:
        """A revision was taken up and ``managed`` are the hosts this daemon manages at it: every
        series of any other host is removed, and later reports of one are ignored; the hosts dropped."""
        with self._lock:
            self._managed = frozenset(managed)
            dropped = set(self._series) - self._managed
            for host in dropped:
                for metric, labels in self._series.pop(host):
                    metric.remove(*labels)
            return dropped

    def revision_loaded(self, ok: bool) -> None:
        """The newest revision's manifests loaded (``ok``), or could not be used (counted)."""
        self.revision_ok.set(1 if ok else 0)
        if not ok:
            self.manifest_errors.inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
