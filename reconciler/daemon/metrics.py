"""The daemon's Prometheus metrics, in a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reconciler.daemon.decision import Reason
from reconciler.daemon.verdict import HostVerdict
from reconciler.engine.plan import HostPlan


class Metrics:
    """Every metric the daemon exports; :meth:`host_reconciled` records one host's reconcile."""

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
        self.fetch_failures = Counter(
            "virt_reconcile_fetch_failures_total",
            "Failed fetches of the manifest source",
            registry=self.registry,
        )

    def host_reconciled(
        self, host: str, verdict: HostVerdict, plan: HostPlan | None, *, reason: Reason, seconds: float
    ) -> None:
        """Record one reconcile of ``host``: its time, result, why it ran, and its policy's usage."""
        self.duration.labels(host).observe(seconds)
        self.results.labels(host, verdict.result).inc()
        if verdict.ok:
            self.last_success.labels(host).set(time.time())
        if verdict.drift_corrections:
            self.drift.labels(host).inc(verdict.drift_corrections)
        if reason is Reason.RETRY:
            self.retries.labels(host).inc()
        if verdict.result == "refused":
            self.refusals.labels(host).inc()
        if plan is not None and plan.policy is not None:
            for rule in plan.policy.rules:
                value = rule.before if verdict.result == "refused" else rule.after
                self.usage.labels(host, rule.rule).set(value)
                self.limit.labels(host, rule.rule).set(rule.limit)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
