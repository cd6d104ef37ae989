"""Saved plans: ``plan --out FILE`` writes one, ``apply --plan FILE`` carries out exactly its actions.

A saved plan records, per host, the fingerprint of the observed state it was made from, the host's
URI, capacity and overcommit policy (so the policy can be re-checked at apply time without the
manifests), and every action with all it needs to run (the XML to define, balloon targets...).
Apply re-observes each host first; any host whose state moved makes the whole plan stale.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.engine.apply import DEFAULT_SETTINGS, NO_HOOKS, ApplySettings, Hooks, apply_host_plan
from reconciler.engine.diff import Change
from reconciler.engine.plan import Action, ActionKind, DesiredHost, Phase, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.reconcile import Connector, Outcome
from reconciler.errors import SavedPlanError, StalePlanError
from reconciler.files.atomic import write_atomically
from reconciler.offline.snapshot import fingerprint
from reconciler.report import plan_document
from reconciler.spec.models import Capacity, DomainSpec, Host, Overcommit, Owner

KIND = "virt-reconcile/saved-plan"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SavedHost:
    """One host of a saved plan."""

    uri: str
    fingerprint: str
    capacity: Capacity
    overcommit: Overcommit
    actions: list[Action]


@dataclass(frozen=True)
class SavedPlan:
    """A saved plan as loaded back."""

    revision: str
    hosts: dict[str, SavedHost]


def _action(action: Action) -> dict[str, Any]:
    return {
        "kind": action.kind.value,
        "host": action.host,
        "domain": action.domain,
        "phase": action.phase,
        "changes": [[c.field, c.before, c.after] for c in action.changes],
        "restart": action.restart,
        "reason": action.reason,
        "xml": action.xml,
        "autostart": action.autostart,
        "spec": action.spec.model_dump(mode="json", by_alias=True) if action.spec else None,
        "configMemory": action.config_memory,
        "liveMemory": action.live_memory,
        "stopFirst": action.stop_first,
    }


def _load_action(data: dict[str, Any]) -> Action:
    return Action(
        kind=ActionKind(data["kind"]),
        host=data["host"],
        domain=data["domain"],
        phase=Phase(int(data["phase"])),
        changes=tuple(Change(*change) for change in data["changes"]),
        restart=bool(data["restart"]),
        reason=data["reason"],
        xml=data["xml"],
        autostart=data["autostart"],
        spec=DomainSpec.model_validate(data["spec"]) if data["spec"] else None,
        config_memory=data["configMemory"],
        live_memory=data["liveMemory"],
        stop_first=bool(data["stopFirst"]),
    )


def save_plan(
    path: Path,
    plan: Plan,
    *,
    fingerprints: dict[str, str],
    policies: dict[str, tuple[Capacity, Overcommit]],
) -> None:
    """Write ``plan`` with everything ``apply --plan`` needs."""
    document = {
        "kind": KIND,
        "formatVersion": FORMAT_VERSION,
        "revision": plan.revision,
        "hosts": {
            name: {
                "uri": host.uri,
                "fingerprint": fingerprints[name],
                "capacity": policies[name][0].model_dump(mode="json", by_alias=True),
                "overcommit": policies[name][1].model_dump(mode="json", by_alias=True),
                "actions": [_action(action) for action in host.actions],
            }
            for name, host in plan.hosts.items()
            if name in fingerprints
        },
        "plan": plan_document(plan),
    }
    write_atomically(path, json.dumps(document, indent=2) + "\n")


def load_plan(path: Path) -> SavedPlan:
    """Read a saved plan back; a clear error for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") != KIND:
            raise ValueError(f"kind is {data.get('kind')!r}, not {KIND!r}")
        hosts = {
            name: SavedHost(
                uri=host["uri"],
                fingerprint=host["fingerprint"],
                capacity=Capacity.model_validate(host["capacity"]),
                overcommit=Overcommit.model_validate(host["overcommit"]),
                actions=[_load_action(action) for action in host["actions"]],
            )
            for name, host in data["hosts"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SavedPlanError(f"{path}: not a saved virt-reconcile plan: {err}") from err
    return SavedPlan(revision=data.get("revision", ""), hosts=hosts)


def apply_saved(
    saved: SavedPlan,
    connect: Connector,
    settings: ApplySettings = DEFAULT_SETTINGS,
    hooks: Hooks = NO_HOOKS,
) -> Outcome:
    """Apply exactly the actions of a saved plan, after checking no host moved and the policy holds.

    Every host is observed before anything changes: one stale host refuses the whole plan.
    """
    outcome = Outcome(Plan(revision=saved.revision))
    hosts = {
        name: Host.model_validate(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Host",
                "metadata": {"name": name},
                "spec": {
                    "uri": entry.uri,
                    "capacity": entry.capacity.model_dump(by_alias=True, mode="json"),
                    "overcommit": entry.overcommit.model_dump(by_alias=True, mode="json"),
                },
            }
        )
        for name, entry in saved.hosts.items()
    }
    with ExitStack() as stack:
        hypervisors = {name: stack.enter_context(connect(host, True)) for name, host in hosts.items()}
        stale = []
        for name, hypervisor in hypervisors.items():
            entry = saved.hosts[name]
            observed = hypervisor.observe()
            if fingerprint(observed) != entry.fingerprint:
                stale.append(name)
                continue
            current = build_host_plan(DesiredHost(name, entry.uri, {}, _no_owner), observed)
            policy = HostPolicy(entry.capacity, entry.overcommit)
            outcome.plan.hosts[name] = replace(
                current,
                actions=tuple(entry.actions),
                policy=policy.judge(observed, current.before, entry.actions),
            )
        if stale:
            raise StalePlanError(
                f"the saved plan is stale: {', '.join(stale)} changed since it was made; nothing was "
                "applied (plan again)"
            )
        for name, host_plan in outcome.plan.hosts.items():
            if hooks.on_plan is not None:
                hooks.on_plan(host_plan)
            outcome.results[name] = apply_host_plan(hypervisors[name], host_plan, settings, hooks)
    return outcome


def _no_owner(name: str) -> Owner:
    raise AssertionError(f"nothing is defined while re-observing for a saved plan ({name})")
