"""One reconcile pass over every selected host: observe, plan, and (for apply) execute.

Shared by the CLI and the daemon. The way to reach a host is injected as ``connect``, so
this module never imports libvirt; tests can pass a connector that wraps the real one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field

from reconciler.apply import DEFAULT_WORKERS, ActionResult, apply_host_plan
from reconciler.content_cache import ContentCache
from reconciler.domxml import cached_parses
from reconciler.errors import HostError, ReconcilerError
from reconciler.hypervisor import HostObservation, Hypervisor
from reconciler.manifests import ManifestSet
from reconciler.models import Capacity, Host, Overcommit, Owner
from reconciler.plan import HostPlan, Plan, build_host_plan
from reconciler.policy import evaluate, host_facts
from reconciler.savedplan import SavedPlan
from reconciler.snapshot import fingerprint

Connector = Callable[[Host, bool], AbstractContextManager[Hypervisor]]


@dataclass
class Outcome:
    """The plan for every host and, after an apply, what each action did."""

    plan: Plan
    results: dict[str, list[ActionResult]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether any host was blocked or any action failed."""
        return self.plan.has_errors or any(not r.ok for rs in self.results.values() for r in rs)


def select_hosts(manifests: ManifestSet, names: Iterable[str] | None) -> list[str]:
    """The hosts to work on: all, or those named (unknown names are an error)."""
    if not names:
        return list(manifests.hosts)
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in manifests.hosts]
    if unknown:
        known = ", ".join(manifests.hosts) or "none"
        raise ValueError(f"unknown host {', '.join(map(repr, unknown))} (hosts: {known})")
    return wanted


def owner_of(manifests: ManifestSet, host: str, revision: str) -> Callable[[str], Owner]:
    """The ownership metadata a desired domain of ``host`` will carry (made only when written)."""

    def owner(name: str) -> Owner:
        return Owner(
            manifest=manifests.domain_source(host, name).file,
            revision=revision,
            spec_hash=manifests.domains[host][name].spec.spec_hash(),
        )

    return owner


def plan_host(
    manifests: ManifestSet,
    host: str,
    hypervisor: Hypervisor,
    *,
    revision: str,
    allow_delete: bool,
    parse_cache: ContentCache | None = None,
) -> HostPlan:
    """Observe one connected host, plan it, and check the plan against the host's overcommit policy.

    With a ``parse_cache``, domain XML parsed in an earlier run is not parsed again.
    """
    spec = manifests.hosts[host].spec
    observed = hypervisor.observe()
    with cached_parses(parse_cache, f"{host} {spec.uri}", [domain.xml for domain in observed.domains]):
        plan = build_host_plan(
            host,
            spec.uri,
            manifests.domains[host],
            owner_of(manifests, host, revision),
            observed,
            allow_delete=allow_delete or spec.prune,
        )
    check_policy(plan, spec.capacity, spec.overcommit, observed)
    return plan


def check_policy(
    plan: HostPlan, capacity: Capacity, overcommit: Overcommit, observed: HostObservation
) -> None:
    """Evaluate a host's overcommit policy on its plan, with the facts observed (capacity overriding)."""
    facts = host_facts(
        capacity,
        cpus=observed.cpus,
        memory=observed.memory,
        swap=observed.swap,
        ksm_saved=observed.ksm_saved,
    )
    plan.policy = evaluate(overcommit, facts, plan.before, plan.actions)
    plan.observed = observed


class StalePlanError(ReconcilerError):
    """A saved plan whose hosts moved since it was made: nothing is applied."""


def apply_saved(
    saved: SavedPlan,
    connect: Connector,
    *,
    shutdown_timeout: float = 60.0,
    on_plan: Callable[[HostPlan], None] | None = None,
    on_result: Callable[[ActionResult], None] | None = None,
    workers: int = DEFAULT_WORKERS,
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
            current = build_host_plan(name, entry.uri, {}, _no_owner, observed, allow_delete=False)
            host_plan = HostPlan(
                host=name,
                uri=entry.uri,
                actions=list(entry.actions),
                errors=current.errors,
                before=current.before,
            )
            check_policy(host_plan, entry.capacity, entry.overcommit, observed)
            outcome.plan.hosts[name] = host_plan
        if stale:
            raise StalePlanError(
                f"the saved plan is stale: {', '.join(stale)} changed since it was made; nothing was "
                "applied (plan again)"
            )
        for name, host_plan in outcome.plan.hosts.items():
            if on_plan is not None:
                on_plan(host_plan)
            outcome.results[name] = apply_host_plan(
                hypervisors[name],
                host_plan,
                shutdown_timeout=shutdown_timeout,
                on_result=on_result,
                workers=workers,
            )
    return outcome


def _no_owner(name: str) -> Owner:
    raise AssertionError(f"nothing is defined while re-observing for a saved plan ({name})")


def reconcile(
    manifests: ManifestSet,
    connect: Connector,
    *,
    hosts: Iterable[str] | None = None,
    apply: bool,
    allow_delete: bool = False,
    revision: str = "",
    shutdown_timeout: float = 60.0,
    on_plan: Callable[[HostPlan], None] | None = None,
    on_result: Callable[[ActionResult], None] | None = None,
    stop: threading.Event | None = None,
    workers: int = DEFAULT_WORKERS,
    parse_cache: ContentCache | None = None,
) -> Outcome:
    """Plan (and with ``apply``, execute) every selected host; one host's failure spares the others."""
    outcome = Outcome(Plan(revision=revision))
    for name in select_hosts(manifests, hosts):
        host = manifests.hosts[name]
        try:
            with connect(host, apply) as hypervisor:
                host_plan = plan_host(
                    manifests,
                    name,
                    hypervisor,
                    revision=revision,
                    allow_delete=allow_delete,
                    parse_cache=parse_cache,
                )
                outcome.plan.hosts[name] = host_plan
                if on_plan is not None:
                    on_plan(host_plan)
                if apply:
                    outcome.results[name] = apply_host_plan(
                        hypervisor,
                        host_plan,
                        shutdown_timeout=shutdown_timeout,
                        on_result=on_result,
                        stop=stop,
                        workers=workers,
                    )
        except HostError as err:
            failed = outcome.plan.hosts.setdefault(name, HostPlan(host=name, uri=host.spec.uri))
            failed.errors.append(str(err))
            if on_plan is not None and not failed.actions:
                on_plan(failed)
    return outcome
