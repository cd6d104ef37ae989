"""What every plan format shares: counts per action kind, the one-line summary, and how a
field value or a new domain's spec is written for people (pure)."""

from __future__ import annotations

import json
from typing import Any

from reconciler.engine.actions import Action, ActionKind
from reconciler.engine.plan import Plan
from reconciler.spec.sizes import format_size

ORDER = (
    ActionKind.DEFINE,
    ActionKind.UPDATE,
    ActionKind.BALLOON,
    ActionKind.START,
    ActionKind.STOP,
    ActionKind.UNDEFINE,
)


#: How the summary line counts the kinds beyond :data:`ORDER`, shown only when some are planned.
_EXTRA_LABELS = {
    ActionKind.MOVE: "to move",
    ActionKind.RESTART: "to restart",
    ActionKind.POOL: "pool(s) to ensure",
    ActionKind.CREATE_VOLUME: "volume(s) to create",
    ActionKind.RESIZE_VOLUME: "volume(s) to grow",
    ActionKind.DELETE_VOLUME: "volume(s) to delete",
    ActionKind.RESEED: "seed(s) to write",
}


def show_value(value: Any) -> str:
    """A field value as a manifest author would write it (true, null, 4GiB)."""
    return value if isinstance(value, str) and value else json.dumps(value)


def define_lines(action: Action) -> list[str]:
    """A new domain's spec in a few lines: scalars on one, then one line per disk, NIC and boot."""
    scalars: list[str] = []
    groups: dict[str, list[str]] = {}
    for change in action.changes:
        if change.after is None:
            continue
        if "." in change.field:
            group, sub = change.field.rsplit(".", 1)
            groups.setdefault(group, []).append(f"{sub}={show_value(change.after)}")
        else:
            scalars.append(f"{change.field}={show_value(change.after)}")
    return [" ".join(scalars)] + [f"{group}: {' '.join(items)}" for group, items in groups.items()]


def first_seed(action: Action) -> bool:
    """Whether a reseed writes a domain's first seed (no digest recorded before): nothing is rewritten."""
    return action.kind is ActionKind.RESEED and bool(action.changes) and action.changes[0].before is None


def action_mark(action: Action) -> tuple[str, str]:
    """The mark and the name an action is shown with: ``+ seed`` for a first seed, else its kind's."""
    return ("+", "seed") if first_seed(action) else (action.kind.symbol, action.kind.value)


def volume_line(action: Action) -> str:
    """A volume action in one line: ``volume images/web-root: 20GiB → 30GiB (live: ...)``."""
    volume = action.volume
    if volume is None:
        return ""
    name = f"volume {volume.pool}/{volume.name}"
    why = f" ({action.reason})" if action.reason else ""
    if action.kind is ActionKind.CREATE_VOLUME:
        return f"{name}: {format_size(volume.capacity)}, {action.reason}"
    if action.kind is ActionKind.RESIZE_VOLUME:
        return f"{name}: {format_size(volume.previous)} → {format_size(volume.capacity)}{why}"
    if action.kind is ActionKind.RESEED:  # the seed's digest, never its content
        seed = action.changes[0] if action.changes else None
        before, after = (seed.before or "none", seed.after or "none") if seed else ("?", "?")
        if first_seed(action):
            return f"{name}: cloud-init seed {after}, {format_size(volume.capacity)}{why}"
        return f"{name}: cloud-init seed {before} → {after}{why}"
    return f"{name} ({format_size(volume.previous)}) deleted{why}"


def summary(plan: Plan) -> dict[str, int]:
    """Counts per action kind (a move once), plus orphans kept, domains held, conflicts, errors and
    domains waiting for a restart."""
    counts = {kind.value: 0 for kind in (*ORDER, *_EXTRA_LABELS)}
    for action in plan.actions:
        if action.kind is not ActionKind.MOVE or action.moves_in:  # a move counts once
            counts[action.kind.value] += 1
    hosts = plan.hosts.values()
    counts["orphansKept"] = sum(1 for h in hosts for o in h.orphans if not o.delete)
    counts["held"] = sum(len(h.held) for h in hosts)
    counts["conflicts"] = sum(len(h.conflicts) for h in hosts)
    counts["errors"] = sum(len(h.errors) for h in hosts)
    counts["refusedHosts"] = sum(1 for h in hosts if h.refused)
    counts["suspended"] = sum(len(h.suspended) for h in hosts)
    counts["deferredHosts"] = sum(1 for h in hosts if h.deferred)
    counts["pendingRestarts"] = sum(len(h.pending_restarts) for h in hosts)
    return counts


def summary_line(plan: Plan) -> str:
    """``Plan: 1 to define, ...`` or the all-clear."""
    counts = summary(plan)
    extras = [
        f"{counts[key]} {label}"
        for key, label in (
            ("orphansKept", "orphan(s) kept"),
            ("held", "domain(s) held"),
            ("conflicts", "conflict(s)"),
            ("errors", "error(s)"),
            ("refusedHosts", "host(s) refused by the overcommit policy"),
            ("suspended", "domain(s) suspended"),
            ("deferredHosts", "host(s) deferred by their sync windows"),
            ("pendingRestarts", "domain(s) waiting for a restart (apply --restart-pending)"),
        )
        if counts[key]
    ]
    if not plan.has_changes:
        troubled = plan.has_errors or plan.refused
        head = "No changes planned." if troubled else "No changes: every host matches the manifests."
        return head + (f" {', '.join(extras)}." if extras else "")
    parts = ", ".join(f"{counts[kind.value]} to {kind.value}" for kind in ORDER)
    for kind, label in _EXTRA_LABELS.items():
        if counts[kind.value]:
            parts += f", {counts[kind.value]} {label}"
    return f"Plan: {parts}." + (f" {', '.join(extras)}." if extras else "")
