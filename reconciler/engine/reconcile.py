"""One reconcile pass over every selected host: observe, plan, and (for apply) execute.

Shared by the CLI and the daemon. The way to reach a host is injected as ``connect``, so
this module never imports libvirt; tests can pass a connector that wraps the real one.

Every selected host is observed before any is changed, and the plans are made together, so a
domain whose host changed is one move (off the old host first, then onto the new one). Other hosts
of the manifests are observed too (read only) when a selected host is to receive a domain that may
still live on one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.engine.actions import Action
from reconciler.engine.apply import (
    DEFAULT_SETTINGS,
    NO_HOOKS,
    ActionResult,
    ApplySettings,
    Hooks,
    apply_fleet,
)
from reconciler.engine.fleet import plan_fleet
from reconciler.engine.hypervisor import HostEnvironment, HostObservation, Hypervisor
from reconciler.engine.plan import DesiredHost, HostPlan, Plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.preflight import wanted_paths
from reconciler.engine.pruning import DeletionRules
from reconciler.errors import HostError, SelectionError
from reconciler.files.content_cache import ContentCache
from reconciler.libvirtxml.parse import cached_parses
from reconciler.spec.manifests import ManifestSet
from reconciler.spec.models import Domain, Host, Owner

Connector = Callable[[Host, bool], AbstractContextManager[Hypervisor]]


@dataclass
class Outcome:
    """The plan for every host and, after an apply, what each action did."""

    plan: Plan
    results: dict[str, list[ActionResult]] = field(default_factory=dict)
    host_errors: dict[str, HostError] = field(default_factory=dict)  # hosts that failed after planning
    cancelled: bool = False  # the question before undefining was answered no: nothing was applied

    @property
    def failed(self) -> bool:
        """Whether any host was blocked or failed, any action failed, or the apply was cancelled."""
        failed_action = any(not r.ok for rs in self.results.values() for r in rs)
        return self.plan.has_errors or failed_action or bool(self.host_errors) or self.cancelled


@dataclass(frozen=True)
class ReconcileOptions:
    """What one pass does: plan only or apply, which hosts, the rules for undefining, the revision
    and manifest root recorded in ownership metadata, and how actions are carried out."""

    apply: bool = False
    hosts: tuple[str, ...] | None = None  # None: every host of the manifests
    allow_delete: bool = False
    allow_mass_delete: bool = False
    revision: str = ""
    root: str = ""  # identity of the manifest root loaded (adapters.gitsource.root_identity); "" unknown
    whole_tree: bool = True  # False when a single file was loaded: nothing is pruned
    settings: ApplySettings = DEFAULT_SETTINGS


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


def owner_of(manifests: ManifestSet, host: str, options: ReconcileOptions) -> Callable[[str], Owner]:
    """The ownership metadata a desired domain of ``host`` will carry (made only when written)."""

    def owner(name: str) -> Owner:
        spec = manifests.domains[host][name].spec
        return Owner(
            manifest=manifests.domain_source(host, name).file,
            revision=options.revision,
            spec_hash=spec.spec_hash(),
            root=options.root,
            host=host,
            deletion_protection=spec.deletion_protection,
        )

    return owner


def desired_hosts(manifests: ManifestSet, options: ReconcileOptions) -> dict[str, DesiredHost]:
    """What the manifests want on every host, with the rules each plan is made under."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    desired = {}
    for name, host in manifests.hosts.items():
        spec = host.spec
        rules = DeletionRules(
            allow=options.allow_delete or spec.prune,
            whole_tree=options.whole_tree,
            root=options.root,
            max_deletions=spec.max_deletions,
            allow_mass=options.allow_mass_delete,
            now=now,
        )
        desired[name] = DesiredHost(
            name=name,
            uri=spec.uri,
            domains=manifests.domains[name],
            owner_of=owner_of(manifests, name, options),
            deletion=rules,
            policy=HostPolicy(spec.capacity, spec.overcommit),
        )
    return desired


def reconcile(
    manifests: ManifestSet,
    connect: Connector,
    options: ReconcileOptions,
    hooks: Hooks = NO_HOOKS,
    parse_cache: ContentCache | None = None,
) -> Outcome:
    """Plan (and with ``options.apply``, execute) every selected host; one host's failure spares the
    others. With a ``parse_cache``, domain XML parsed in an earlier run is not parsed again."""
    selected = select_hosts(manifests, options.hosts)
    outcome = Outcome(Plan(revision=options.revision))
    desired = desired_hosts(manifests, options)
    with _Sessions(connect, write=options.apply) as sessions:
        # One global order (by hypervisor) for taking the hosts' apply locks: two runs over
        # overlapping hosts never wait on each other in a circle.
        for name in sorted(selected, key=lambda n: manifests.hosts[n].spec.address.hypervisor_key):
            sessions.open(manifests.hosts[name])
        if _may_receive_a_move(desired, sessions.observed, selected):
            for name in manifests.hosts:
                if name not in selected:
                    sessions.look_at(manifests.hosts[name])
        with _parse_scopes(parse_cache, manifests, sessions.observed):
            plans = plan_fleet(
                desired, sessions.observed, sessions.unobservable, selected, sessions.environment
            )
        for name in selected:
            plan = plans.get(name) or HostPlan.failed(
                name, manifests.hosts[name].spec.uri, sessions.errors[name]
            )
            outcome.plan.hosts[name] = plan
            if hooks.on_plan is not None:
                hooks.on_plan(plan)
        if options.apply:
            outcome.cancelled = not _approved(outcome.plan, hooks)
            if not outcome.cancelled:
                outcome.results = apply_fleet(
                    sessions.hypervisors, outcome.plan.hosts, options.settings, hooks
                )
    outcome.host_errors.update(sessions.late_errors)
    return outcome


def _may_receive_a_move(
    desired: Mapping[str, DesiredHost], observed: Mapping[str, HostObservation], selected: list[str]
) -> bool:
    """Whether a selected host lacks a domain its manifests want (it may be on another host)."""
    for name in selected:
        if name in observed:
            present = {domain.name for domain in observed[name].domains}
            if any(domain not in present for domain in desired[name].domains):
                return True
    return False


def _approved(plan: Plan, hooks: Hooks) -> bool:
    """Ask before applying plans that take domains off hosts (undefine, move), when asked to ask."""
    leaving: list[Action] = [
        action
        for host in plan.hosts.values()
        if not host.blocked
        for action in host.actions
        if action.releases
    ]
    return not leaving or hooks.confirm is None or hooks.confirm(leaving)


@contextmanager
def _parse_scopes(
    cache: ContentCache | None, manifests: ManifestSet, observed: Mapping[str, HostObservation]
) -> Iterator[None]:
    """Every observed host's domain XML parsed from the cache where an earlier run parsed it."""
    with ExitStack() as stack:
        for name, seen in observed.items():
            scope = f"{name} {manifests.hosts[name].spec.uri}"
            stack.enter_context(cached_parses(cache, scope, [domain.xml for domain in seen.domains]))
        yield


class _Sessions:
    """The hosts of one pass: connections kept open from observation to the end of apply, and the
    hosts that could not be reached, each with its error (one host's failure spares the others)."""

    def __init__(self, connect: Connector, *, write: bool) -> None:
        self._connect = connect
        self._write = write
        self._stack = ExitStack()
        self.hypervisors: dict[str, Hypervisor] = {}
        self.observed: dict[str, HostObservation] = {}
        self.errors: dict[str, HostError] = {}
        self.late_errors: dict[str, HostError] = {}  # failed when its connection closed

    @property
    def unobservable(self) -> dict[str, str]:
        """Each host that could not be observed, with why."""
        return {name: str(error) for name, error in self.errors.items()}

    def __enter__(self) -> _Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def open(self, host: Host) -> None:
        """Connect to a host this pass may change and observe it; the connection stays open."""
        try:
            context = self._connect(host, self._write)
            hypervisor = context.__enter__()
        except HostError as err:
            self.errors[host.name] = err
            return
        self._stack.push(self._closer(host.name, context))
        try:
            self.observed[host.name] = hypervisor.observe()
            self.hypervisors[host.name] = hypervisor
        except HostError as err:
            self.errors[host.name] = err

    def environment(self, name: str, domains: Sequence[Domain]) -> HostEnvironment:
        """What the pre-flight needs of an open host: its networks, bridges and the domains' files.
        A host that cannot say reports everything as not checked (the plan still shows it)."""
        try:
            return self.hypervisors[name].environment(wanted_paths(domains))
        except HostError as err:
            return HostEnvironment(unchecked=(f"the host could not be asked: {err}",))

    def look_at(self, host: Host) -> None:
        """Observe a host this pass will not change (read only, closed at once)."""
        try:
            with self._connect(host, False) as hypervisor:
                self.observed[host.name] = hypervisor.observe()
        except HostError as err:
            self.errors[host.name] = err

    def _closer(
        self, name: str, context: AbstractContextManager[Hypervisor]
    ) -> Callable[[type[BaseException] | None, BaseException | None, object], bool]:
        """An exit callback that records a host error raised while closing (a sandbox saving its state)."""

        def close(kind: type[BaseException] | None, error: BaseException | None, trace: object) -> bool:
            try:
                return bool(context.__exit__(kind, error, trace))  # type: ignore[arg-type]
            except HostError as err:
                self.late_errors[name] = err
                return False

        return close
