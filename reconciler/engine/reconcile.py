"""One reconcile pass over every selected host: observe, plan, and (for apply) execute.

Shared by the CLI and the daemon. The way to reach a host is injected as ``connect``, so
this module never imports libvirt; tests can pass a connector that wraps the real one.

Every selected host is observed before any is changed, and the plans are made together, so a
domain whose host changed is one move (off the old host first, then onto the new one). Other hosts
of the manifests are observed too (read only) when a selected host is to receive a domain that may
still live on one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
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
from reconciler.engine.hypervisor import HostObservation, Hypervisor
from reconciler.engine.ownership import RevisionCheck, commit_of
from reconciler.engine.plan import DesiredHost, HostPlan, Plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.sessions import DEFAULT_HOST_PARALLEL, Connector, HostSessions
from reconciler.engine.volumes import volumes_deleted_with
from reconciler.errors import DomainXMLError, HostError, SelectionError
from reconciler.files.content_cache import ContentCache
from reconciler.libvirtxml.parse import cached_parses, parse_domain
from reconciler.spec.labels import Selector
from reconciler.spec.manifests import DomainKey, ManifestSet
from reconciler.spec.models import Domain, Owner
from reconciler.spec.syncwindows import deferral

EVERY_HOST = Selector()  # the selector that matches every host

__all__ = ["Connector", "Outcome", "ReconcileOptions", "desired_hosts", "reconcile", "select_hosts"]


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
        failed_action = any(not (r.ok or r.refused) for rs in self.results.values() for r in rs)
        return self.plan.has_errors or failed_action or bool(self.host_errors) or self.cancelled

    @property
    def refused_hosts(self) -> list[str]:
        """The hosts the policy refused: when planned, or during the apply once the pools their plan
        makes ran (those pools are all that changed there)."""
        return [
            name
            for name, host in self.plan.hosts.items()
            if host.refused or any(r.refused for r in self.results.get(name, ()))
        ]


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
    selector: Selector = EVERY_HOST  # hosts picked by their labels (with ``hosts``: both must hold)
    host_parallel: int = DEFAULT_HOST_PARALLEL  # hosts connected, observed and applied at once
    ignore_sync_windows: bool = False  # apply now on hosts outside their sync windows (an explicit override)
    now: datetime | None = None  # the time sync windows and import marks are judged at; None: the clock's
    restart_pending: bool = False  # restart running domains whose definition waits for a restart
    #: Of the recorded commits given, those ``revision`` contains (git: the same commit or an
    #: ancestor); a domain written by any other is held. None: no check (no git, dir: sources).
    contained_revisions: Callable[[frozenset[str]], frozenset[str]] | None = None
    overwrite_newer: bool = False  # change and prune domains a newer revision wrote (apply --overwrite-newer)


def select_hosts(
    manifests: ManifestSet, names: Iterable[str] | None, selector: Selector | None = None
) -> list[str]:
    """The hosts to work on: all, or those named, or those whose labels the selector matches (with
    both, a host must be named and match). An unknown name, or a selector that matches no host, is
    an error: a typo must not plan nothing and call it success."""
    named = list(dict.fromkeys(names)) if names else list(manifests.hosts)
    unknown = [name for name in named if name not in manifests.hosts]
    if unknown:
        known = ", ".join(manifests.hosts) or "none"
        raise SelectionError(f"unknown host {', '.join(map(repr, unknown))} (hosts: {known})")
    wanted = [name for name in manifests.hosts if name in named]  # in manifest order, as shown
    if not selector:
        return wanted
    chosen = [name for name in wanted if selector.matches(manifests.hosts[name].metadata.labels)]
    if not chosen:
        among = f"the hosts {', '.join(wanted)}" if names else "the hosts of the manifests"
        raise SelectionError(f"no host matches the selector {str(selector)!r} among {among}")
    return chosen


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
            delete_volumes=volumes_deleted_with(spec),
            seed=seed.digest if (seed := manifests.seeds.get(DomainKey(host, name))) is not None else "",
            graphics_password_file=(spec.graphics.password_file or "") if spec.graphics else "",
        )

    return owner


def desired_hosts(manifests: ManifestSet, options: ReconcileOptions) -> dict[str, DesiredHost]:
    """What the manifests want on every host, with the rules each plan is made under."""
    moment = options.now or datetime.now(UTC)
    now = moment.isoformat(timespec="seconds")
    annotated = {name for domains in manifests.domains.values() for name, d in domains.items() if d.suspended}
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
            policy=HostPolicy(spec.capacity, spec.overcommit, _pool_ratios(manifests, name)),
            suspended=_suspended_on(manifests.domains[name], annotated),
            host_suspended=host.suspended,
            deferred="" if options.ignore_sync_windows else deferral(spec.sync_windows, moment),
            restart_pending=options.restart_pending,
            pools=manifests.pools.get(name, {}),
            seeds={key.name: seed for key, seed in manifests.seeds.items() if key.host == name},
        )
    return desired


def _pool_ratios(manifests: ManifestSet, host: str) -> dict[str, float]:
    """The storage overcommit ratio of each pool a host's manifests name (storage.commit)."""
    return {name: pool.spec.overcommit.ratio for name, pool in manifests.pools.get(host, {}).items()}


def _pool_folders(desired: DesiredHost) -> list[str]:
    """The folders of a host's dir Pools: their filesystems estimate a pool that does not run yet."""
    return [pool.target for pool in desired.pools.values() if pool.spec.type == "dir"]


def _suspended_on(domains: Mapping[str, Domain], annotated: set[str]) -> frozenset[str]:
    """The suspended domain names that hold on one host: its own annotated domains, and those
    annotated on another host that this one does not want (the source half of a move stays put)."""
    return frozenset(name for name in annotated if name not in domains or domains[name].suspended)


def reconcile(
    manifests: ManifestSet,
    connect: Connector,
    options: ReconcileOptions,
    hooks: Hooks = NO_HOOKS,
    parse_cache: ContentCache | None = None,
) -> Outcome:
    """Plan (and with ``options.apply``, execute) every selected host; one host's failure spares the
    others. With a ``parse_cache``, domain XML parsed in an earlier run is not parsed again."""
    selected = select_hosts(manifests, options.hosts, options.selector)
    outcome = Outcome(Plan(revision=options.revision))
    desired = desired_hosts(manifests, options)
    with HostSessions(connect, write=options.apply, parallel=options.host_parallel) as sessions:
        sessions.open([manifests.hosts[name] for name in selected])
        if _may_receive_a_move(desired, sessions.observed, selected):
            sessions.look_at([host for name, host in manifests.hosts.items() if name not in selected])
        with _parse_scopes(parse_cache, manifests, sessions.observed):
            check = revision_check(options, sessions.observed)
            if check is not None:
                desired = {name: replace(host, revisions=check) for name, host in desired.items()}
            plans = plan_fleet(
                desired,
                sessions.observed,
                sessions.unobservable,
                selected,
                lambda host, domains: sessions.environment(host, domains, _pool_folders(desired[host])),
                each_host=sessions.each,
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
                _write_metadata(sessions.hypervisors, outcome.plan.hosts, outcome.host_errors)
                outcome.results = apply_fleet(
                    sessions.hypervisors, outcome.plan.hosts, options.settings, hooks, each_host=sessions.each
                )
    outcome.host_errors.update(sessions.late_errors)
    return outcome


def revision_check(
    options: ReconcileOptions, observed: Mapping[str, HostObservation]
) -> RevisionCheck | None:
    """Which of the commits the observed domains record this run's revision contains, asked once
    for them all, and only for those other than its own (right after an apply, none: no git asked).
    None when nothing is checked: no git revision, no way to ask, or ``--overwrite-newer``."""
    run = commit_of(options.revision)
    if not run or options.contained_revisions is None or options.overwrite_newer:
        return None
    recorded: set[str] = set()
    for seen in observed.values():
        for domain in seen.domains:
            try:
                owner = parse_domain(domain.xml).owner
            except DomainXMLError:
                continue
            commit = commit_of(owner.revision) if owner is not None else ""
            if commit and commit != run:
                recorded.add(commit)
    contained = options.contained_revisions(frozenset(recorded)) if recorded else frozenset()
    return RevisionCheck(options.revision, frozenset(contained))


def _write_metadata(
    hypervisors: Mapping[str, Hypervisor], plans: Mapping[str, HostPlan], errors: dict[str, HostError]
) -> None:
    """Each plan's ownership records rewritten without a redefine (``HostPlan.metadata_writes``:
    a guest seen shut off on purpose). Not on a blocked host (refused, in conflict, outside its sync
    windows, suspended): a refused plan changes nothing on its host, metadata included."""
    for name, plan in plans.items():
        hypervisor = hypervisors.get(name)
        if hypervisor is None or plan.blocked:
            continue
        try:
            for domain, owner in plan.metadata_writes.items():
                hypervisor.set_owner(domain, owner)
        except HostError as err:
            errors[name] = err


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
    """Ask before applying plans that take domains off hosts (undefine, move) or delete volumes,
    when asked to ask."""
    leaving: list[Action] = [
        action
        for host in plan.hosts.values()
        if not host.blocked
        for action in host.actions
        if action.asks_first
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
