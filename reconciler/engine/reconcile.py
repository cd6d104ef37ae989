"""One reconcile pass over every selected host: observe, plan, and (for apply) execute.

Shared by the CLI and the daemon. The way to reach a host is injected as ``connect``, so
this module never imports libvirt; tests can pass a connector that wraps the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace

from reconciler.engine.apply import (
    DEFAULT_SETTINGS,
    NO_HOOKS,
    ActionResult,
    ApplySettings,
    Hooks,
    apply_host_plan,
)
from reconciler.engine.hypervisor import Hypervisor
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy
from reconciler.errors import HostError, SelectionError
from reconciler.files.content_cache import ContentCache
from reconciler.libvirtxml.parse import cached_parses
from reconciler.spec.manifests import ManifestSet
from reconciler.spec.models import Host, Owner

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
        raise SelectionError(f"unknown host {', '.join(map(repr, unknown))} (hosts: {known})")
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
        desired = DesiredHost(
            name=host,
            uri=spec.uri,
            domains=manifests.domains[host],
            owner_of=owner_of(manifests, host, revision),
            allow_delete=allow_delete or spec.prune,
            policy=HostPolicy(spec.capacity, spec.overcommit),
        )
        plan = build_host_plan(desired, observed)
    return plan


@dataclass(frozen=True)
class ReconcileOptions:
    """What one pass does: plan only or apply, which hosts, whether orphans may be undefined, the
    revision recorded in ownership metadata, and how actions are carried out."""

    apply: bool = False
    hosts: tuple[str, ...] | None = None  # None: every host of the manifests
    allow_delete: bool = False
    revision: str = ""
    settings: ApplySettings = DEFAULT_SETTINGS


def reconcile(
    manifests: ManifestSet,
    connect: Connector,
    options: ReconcileOptions,
    hooks: Hooks = NO_HOOKS,
    parse_cache: ContentCache | None = None,
) -> Outcome:
    """Plan (and with ``options.apply``, execute) every selected host; one host's failure spares the
    others. With a ``parse_cache``, domain XML parsed in an earlier run is not parsed again."""
    outcome = Outcome(Plan(revision=options.revision))
    for name in select_hosts(manifests, options.hosts):
        host = manifests.hosts[name]
        try:
            with connect(host, options.apply) as hypervisor:
                host_plan = plan_host(
                    manifests,
                    name,
                    hypervisor,
                    revision=options.revision,
                    allow_delete=options.allow_delete,
                    parse_cache=parse_cache,
                )
                outcome.plan.hosts[name] = host_plan
                if hooks.on_plan is not None:
                    hooks.on_plan(host_plan)
                if options.apply:
                    outcome.results[name] = apply_host_plan(hypervisor, host_plan, options.settings, hooks)
        except HostError as err:
            planned = outcome.plan.hosts.get(name)
            failed = HostPlan.failed(name, host.spec.uri, err)
            if planned is not None:  # planned, then failed while applying: keep what the plan said
                failed = replace(planned, errors=(*planned.errors, str(err)), host_error=err)
            outcome.plan.hosts[name] = failed
            if hooks.on_plan is not None and planned is None:
                hooks.on_plan(failed)
    return outcome
