"""How one host's reconcile went, and what the daemon does next: a pure function, no I/O.

The engine keeps the host errors it met (a host that could not be reached, a failed action) beside
their text; their class decides between a retry with backoff (``err.retryable``: the host may come
back by itself) and waiting for a new revision (a refusal, a conflict, a permanent error: retrying
changes nothing). A host whose changes wait on purpose (outside its sync windows, or suspended by
its annotation) is neither: its result says so (``deferred``, ``suspended``), it does not count as
matching the revision, and the daemon wakes it when its window opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.daemon.decision import Reason
from reconciler.engine.apply import ActionResult
from reconciler.engine.plan import HostPlan
from reconciler.errors import HostError, ReconcilerError


@dataclass(frozen=True)
class HostVerdict:
    """A host's result for ``/status`` and the metrics, and whether to retry it."""

    result: str  # applied | unchanged | refused | error | deferred | suspended
    message: str
    retry: bool = False  # a retryable error: try again with backoff
    drift_corrections: int = 0  # actions that put back a change made outside git

    @property
    def ok(self) -> bool:
        """Whether the host now matches the revision: the one place that says which results are
        good (``/status``'s ``appliedRevision``, the metrics and the log all ask here). A deferred
        or suspended host is not: its changes were not made."""
        return self.result in ("applied", "unchanged")

    @property
    def condition(self) -> str:
        """What a repeat of this verdict must match to be the same news (logged and notified once):
        the result and its message; a deferral's result alone, since its message names a closing
        time that moves with a rolling deny window."""
        return self.result if self.result in ("deferred", "suspended") else f"{self.result}: {self.message}"


def judge(
    plan: HostPlan | None, results: Sequence[ActionResult], reason: Reason, late: HostError | None = None
) -> HostVerdict:
    """The verdict on one host from its plan, its actions' results (with the errors they met) and an
    error raised after planning (``late``: the connection failed while closing)."""
    failed = [r for r in results if not (r.ok or r.refused)]
    errors: list[ReconcilerError] = [r.error for r in failed if r.error is not None]
    if plan is not None and plan.host_error is not None:
        errors.append(plan.host_error)
    if late is not None:
        errors.append(late)
    if plan is not None and plan.held and not (plan.errors or plan.conflicts or failed or errors):
        held = "; ".join(f"held {item.domain}: {item.reason}" for item in plan.held)
        return HostVerdict("error", held, retry=True)  # a host out of sight may come back by itself
    if plan is None or plan.errors or plan.conflicts or failed or errors:
        problems = [
            *(plan.errors if plan else ()),
            *(f"conflict: {c.domain}: {c.reason}" for c in (plan.conflicts if plan else ())),
            *(r.detail for r in failed),
        ]
        message = "; ".join(problems) or "; ".join(map(str, errors)) or "reconcile failed"
        return HostVerdict("error", message, retry=any(err.retryable for err in errors))
    if plan.refused:
        assert plan.policy is not None
        return HostVerdict("refused", "; ".join(rule.message() for rule in plan.policy.violations))
    refused = next((r for r in results if r.refused), None)
    if refused is not None:  # refused once the pools its plan makes ran: only those pools changed
        return HostVerdict("refused", refused.detail)
    if plan.host_suspended:
        return HostVerdict("suspended", plan.paused_because)
    if plan.deferred and plan.actions and not results:
        waiting = ", ".join(f"{a.kind.value} {a.domain}" for a in plan.actions)
        return HostVerdict("deferred", f"{len(plan.actions)} action(s) wait ({waiting}): {plan.deferred}")
    if not results:
        return HostVerdict("unchanged", "no changes")
    done = ", ".join(f"{r.action.kind.value} {r.action.domain}" for r in results)
    message = f"{len(results)} action(s): {done}"
    if reason is Reason.DRIFT:
        return HostVerdict("applied", f"drift corrected: {message}", drift_corrections=len(results))
    return HostVerdict("applied", message)
