"""The plan as a stable JSON document, for CI jobs and other programs (pure).

The document is a contract: ``formatVersion``, a ``summary``, per host its orphans, conflicts,
errors, policy and ``pendingRestarts`` (running domains whose definition waits for a restart, with
what waits in ``restartWaits``), and a flat ``actions`` list where every action has ``action``, ``host``,
``domain``, ``changes`` (``{field, before, after}``), ``restart`` and ``reason`` (a ``pool`` action
names its pool in ``pool``, its ``domain`` null; a volume action has its ``volume``, sizes in bytes).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from reconciler.engine.actions import ActionKind
from reconciler.engine.plan import Plan
from reconciler.engine.policy import PolicyReport
from reconciler.engine.syncstate import domain_states
from reconciler.report.summary import summary

FORMAT_VERSION = 1


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as the stable JSON document."""
    return {
        "formatVersion": FORMAT_VERSION,
        "revision": plan.revision,
        "changes": plan.has_changes,
        "summary": summary(plan),
        "hosts": {
            name: {
                "uri": host.uri,
                "blocked": host.blocked,
                "orphans": [
                    {"domain": o.domain, "running": o.running, "delete": o.delete, "reason": o.reason}
                    for o in host.orphans
                ],
                "held": [{"domain": h.domain, "reason": h.reason} for h in host.held],
                "suspended": host.host_suspended,  # the host's own annotation
                "suspendedDomains": list(host.suspended),  # left alone: their annotation or the host's
                "deferred": host.deferred,  # why the actions wait (sync windows); "" when they do not
                "warnings": list(host.warnings),
                "unchecked": list(host.unchecked),
                "conflicts": [{"domain": c.domain, "reason": c.reason} for c in host.conflicts],
                "errors": list(host.errors),
                "pendingRestarts": list(host.pending_restarts),
                "restartWaits": {name: host.restart_waits.get(name, "") for name in host.pending_restarts},
                "refused": host.refused,
                "enforcement": host.policy.enforcement if host.policy else None,
                "violations": [rule.message() for rule in host.policy.violations] if host.policy else [],
                "policy": _policy_document(host.policy),
                # each managed domain's {sync, health, message} (engine.syncstate): what `status` shows too
                "domains": {name: state.document() for name, state in domain_states(host).items()},
            }
            for name, host in plan.hosts.items()
        },
        "actions": [
            {
                "action": action.kind.value,
                "host": action.host,
                "domain": None if action.kind is ActionKind.POOL else action.domain,
                "pool": action.domain if action.kind is ActionKind.POOL else None,  # a pool action's pool
                "peer": action.peer or None,
                "direction": ("in" if action.moves_in else "out") if action.kind.value == "move" else None,
                "changes": [
                    {"field": change.field, "before": change.before, "after": change.after}
                    for change in action.changes
                ],
                "restart": action.restart,
                "reason": action.reason,
                # a volume action's volume, sizes in bytes: {pool, name, capacity, previous, ...}
                "volume": asdict(action.volume) if action.volume is not None else None,
            }
            for action in plan.actions
        ],
    }


def _policy_document(report: PolicyReport | None) -> dict[str, Any]:
    """``rule -> {before, after, limit, ok, ...}``: how full the host is and will be."""
    if report is None:
        return {}
    return {
        rule.rule: {
            "before": rule.before,
            "after": rule.after,
            "peak": rule.peak,
            "limit": rule.limit,
            "ok": rule.ok,
            "raised": rule.raised,
            "unit": rule.unit,
            "arithmetic": rule.arithmetic,
        }
        for rule in report.rules
    }


def render_json(plan: Plan) -> str:
    """The plan as indented JSON text.

    Safe to print as it is: ``json.dumps`` (``ensure_ascii``) escapes every character outside
    printable ASCII, control characters, DEL and bidi overrides included.
    """
    return json.dumps(plan_document(plan), indent=2, sort_keys=False) + "\n"
