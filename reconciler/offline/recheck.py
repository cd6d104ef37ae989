"""Re-derive a saved plan's actions from the re-observed host before any of them runs.

The signature says who made a saved plan; this says whether what it will send is what it shows
and what the policy checks, whoever made it. Every action is checked against the host as
observed at apply time (docs/design.md §3.7):

* a define's XML must be exactly what its spec renders to, named for its domain, carrying our
  ownership metadata, and the domain must be absent;
* an update's XML must be exactly the observed definition with the spec's fields merged in,
  still carrying our ownership metadata;
* the spec the policy counts is read back from the XML, and must agree with the saved spec;
* the changes shown must be what the XML changes (no hidden field, no false value);
* update, balloon, start, stop and undefine must target a domain we manage (or one this plan
  defines, for a start or a balloon); an undefine never one protected from deletion;
* a seed upload must write the seed volume of a domain the plan defines next or one we manage,
  with the digests it shows, over no volume but the domain's own seed; a seed deleted in the
  reseed phase must be one an update of the plan detached;
* actions keep the apply order: each kind in its phase, phases never going back.

A define or update carries the spec read from its XML on from here, so the policy judges what
will be sent even if a check above were ever too lenient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.diff import flatten, spec_changes, with_volume_details
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.seeds import SEED_FIELD, owned_seed_pool, shown
from reconciler.errors import DomainXMLError, SavedPlanError
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.parse import ParsedDomain, parse_domain
from reconciler.libvirtxml.pools import read_pool_xml
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.cloudinit import seed_volume_name
from reconciler.spec.models import DomainSpec
from reconciler.spec.sizes import format_size, parse_size

PHASES: Mapping[ActionKind, frozenset[Phase]] = {
    ActionKind.UNDEFINE: frozenset({Phase.UNDEFINE}),
    ActionKind.STOP: frozenset({Phase.STOP}),
    ActionKind.BALLOON: frozenset({Phase.BALLOON_DOWN, Phase.BALLOON_UP}),
    ActionKind.UPDATE: frozenset({Phase.UPDATE_SHRINK, Phase.UPDATE_GROW}),
    ActionKind.DEFINE: frozenset({Phase.DEFINE}),
    ActionKind.START: frozenset({Phase.START}),
    ActionKind.CREATE_VOLUME: frozenset({Phase.CREATE_VOLUME}),
    ActionKind.RESIZE_VOLUME: frozenset({Phase.VOLUME_GROW}),
    ActionKind.DELETE_VOLUME: frozenset({Phase.DELETE_VOLUME, Phase.RESEED}),  # RESEED: a detached seed
    ActionKind.POOL: frozenset({Phase.POOL}),
    ActionKind.RESEED: frozenset({Phase.CREATE_VOLUME, Phase.RESEED}),
}
_SHOWN_ELSEWHERE = frozenset({"state", "runStrategy"})  # start and stop show them; no XML carries them


@dataclass
class _Host:
    """The re-observed host, and what the actions checked so far do to it."""

    name: str
    seen: dict[str, tuple[DomainObservation, ParsedDomain | None]]
    defined: set[str] = field(default_factory=set)  # by this plan
    specs: dict[str, DomainSpec] = field(default_factory=dict)  # after this plan's updates so far
    ballooned: dict[str, set[str]] = field(default_factory=dict)  # fields shown by balloon actions
    pools: dict[str, dict[str, int]] = field(default_factory=dict)  # volume capacities by pool
    undefined: dict[str, ParsedDomain] = field(default_factory=dict)  # by this plan
    volumes: dict[str, set[str]] = field(default_factory=dict)  # pool/name a domain's disks will use
    defining: set[str] = field(default_factory=set)  # the domains this plan defines (a seed goes first)

    def managed(self, name: str) -> tuple[DomainObservation, ParsedDomain]:
        """The observed domain ``name``, refused unless it carries our ownership metadata."""
        found = self.seen.get(name)
        if found is None:
            raise SavedPlanError("the domain is not on the host")
        live, parsed = found
        if parsed is None or parsed.owner is None:
            raise SavedPlanError(
                "the domain is not managed by virt-reconcile (no ownership metadata): it is never touched"
            )
        return live, parsed


def recheck_actions(host: str, observed: HostObservation, actions: Sequence[Action]) -> tuple[Action, ...]:
    """The actions to run on ``host``, each checked against ``observed``; :class:`SavedPlanError` lists
    every action that does not hold up."""
    state = _Host(host, {live.name: (live, _parse_observed(live)) for live in observed.domains})
    state.pools = {pool.name: {v.name: v.capacity for v in pool.volumes} for pool in observed.pools}
    for action in actions:
        if action.kind is ActionKind.DEFINE:
            state.defining.add(action.domain)
        if action.kind is ActionKind.BALLOON:
            state.ballooned.setdefault(action.domain, set()).update(c.field for c in action.changes)
        if action.spec is not None:
            named = {d.volume.key for d in action.spec.disks if d.volume is not None}
            state.volumes.setdefault(action.domain, set()).update(named)
    checked, problems = [], []
    phase = min(Phase)
    for action in actions:
        try:
            check = _CHECKS.get(action.kind)
            if check is None:
                raise SavedPlanError(f"a saved plan cannot carry a {action.kind.value} action")
            _check_order(host, action, phase)
            checked.append(check(state, action))
        except (SavedPlanError, DomainXMLError) as err:
            problems.append(f"{action.kind.value} {action.domain!r}: {err}")
        phase = max(phase, action.phase)
    if problems:
        raise SavedPlanError("; ".join(problems))
    return tuple(checked)


def _parse_observed(live: DomainObservation) -> ParsedDomain | None:
    try:
        return parse_domain(live.xml, state="running" if live.active else "stopped", autostart=live.autostart)
    except DomainXMLError:
        return None  # unreadable: never managed here (the plan of the host reports it and is blocked)


def _check_order(host: str, action: Action, after: Phase) -> None:
    if action.host != host:
        raise SavedPlanError(f"it names host {action.host!r} but sits under {host!r}")
    if action.phase not in PHASES.get(action.kind, ()):
        raise SavedPlanError(f"a {action.kind.value} does not run in phase {action.phase.name}")
    if action.phase < after:
        raise SavedPlanError(f"phase {action.phase.name} after phase {after.name}: out of the apply order")


def _check_define(host: _Host, action: Action) -> Action:
    name = action.domain
    if name in host.seen or name in host.defined:
        raise SavedPlanError("the domain already exists: a define would replace its definition")
    if action.xml is None or action.spec is None:
        raise SavedPlanError("it has no XML or no spec")
    parsed = _parse_sent(action, action.xml, state="stopped", autostart=bool(action.autostart))
    parsed = replace(parsed, spec=with_volume_details(parsed.spec, action.spec))  # sizes: in the pool
    _agree(action.spec, parsed.spec, ignore=_SHOWN_ELSEWHERE)
    if render_domain(name, action.spec, parsed.owner) != action.xml:
        raise SavedPlanError(
            "its XML is not what its spec renders to: it holds more than the plan shows and checks"
        )
    shown = {c.field for c in spec_changes(None, parsed.spec) if c.after is not None and c.after is not False}
    _check_shown(action, flatten(parsed.spec), required=shown - _SHOWN_ELSEWHERE)
    host.defined.add(name)
    return replace(action, spec=parsed.spec.model_copy(update={"state": action.spec.state}))


def _check_update(host: _Host, action: Action) -> Action:
    name = action.domain
    live, current = host.managed(name)
    if action.xml is None:  # an autostart change alone: nothing is redefined
        if action.spec is not None or action.autostart is None:
            raise SavedPlanError("it redefines nothing and changes no autostart flag")
        _check_shown(action, {"autostart": action.autostart}, required={"autostart"})
        return action
    if action.spec is None:
        raise SavedPlanError("it has XML but no spec")
    autostart = live.autostart if action.autostart is None else action.autostart
    parsed = _parse_sent(action, action.xml, state=current.spec.state, autostart=autostart)
    parsed = replace(parsed, spec=with_volume_details(parsed.spec, action.spec))  # sizes: in the pool
    _agree(action.spec, parsed.spec, ignore=_SHOWN_ELSEWHERE | {"autostart"})
    if merge_domain(live.xml, action.spec, parsed.owner) != action.xml:
        raise SavedPlanError(
            "its XML is not the host's definition with the plan's fields changed: it holds more than the "
            "plan shows and checks"
        )
    before = host.specs.get(name, with_volume_details(current.spec, action.spec))
    differing = {c.field for c in spec_changes(before, parsed.spec)} - _SHOWN_ELSEWHERE - {"autostart"}
    _check_shown(action, flatten(parsed.spec), required=differing, shown_elsewhere=host.ballooned.get(name))
    host.specs[name] = parsed.spec
    return replace(
        action,
        spec=parsed.spec.model_copy(update={"state": action.spec.state, "autostart": action.spec.autostart}),
    )


def _check_balloon(host: _Host, action: Action) -> Action:
    _check_target(host, action)
    config, live = action.config_memory, action.live_memory
    if config is None or config <= 0 or (live is not None and not 0 < live <= config):
        raise SavedPlanError(f"balloon targets {config!r} (persistent) and {live!r} (live) are not valid")
    for change in action.changes:
        if change.field != "currentMemory" or _size(change.after) != config:
            raise SavedPlanError(
                f"it shows {change.field} → {change.after!r} but sets currentMemory to {config} bytes"
            )
    return action


def _check_target(host: _Host, action: Action) -> Action:
    """Start, stop (and balloon): a domain we manage, or for a start one this plan defines."""
    if action.domain not in host.defined or action.kind is ActionKind.STOP:
        host.managed(action.domain)
    return action


def _check_undefine(host: _Host, action: Action) -> Action:
    _live, parsed = host.managed(action.domain)
    owner = parsed.owner
    assert owner is not None  # managed() refuses a domain without one
    if owner.deletion_protection:
        raise SavedPlanError("the domain is protected from deletion")
    if owner.host and owner.host != host.name:
        raise SavedPlanError(f"the domain was defined through host entry {owner.host!r}, not {host.name!r}")
    host.undefined[action.domain] = parsed
    del host.seen[action.domain]
    return action


def _check_detached_seed(host: _Host, name: str, key: str) -> None:
    """A seed deleted in the reseed phase: the domain's own seed, which an update of this plan
    detached (``cloudInit`` removed, or in another pool), and no disk of any domain."""
    _live, parsed = host.managed(name)
    after = host.specs.get(name)  # the spec an update checked earlier will write
    pool = owned_seed_pool(parsed)
    if not pool or key != f"{pool}/{seed_volume_name(name)}" or after is None:
        raise SavedPlanError(f"{key} is not the seed of the domain, detached by an update of this plan")
    if after.cloud_init is not None and after.cloud_init.pool == pool:
        raise SavedPlanError(f"{key} is the seed the domain keeps")
    users = _disk_users(host, key)
    if users:
        raise SavedPlanError(f"{key} is a disk of domain {users[0]!r}")


def _disk_users(host: _Host, key: str) -> list[str]:
    """The domains whose disks use the volume ``pool/name`` now or after this plan."""
    return [user for user, keys in host.volumes.items() if key in keys] + [
        other
        for other, (_seen, read) in host.seen.items()
        if read is not None and key in {d.volume.key for d in read.spec.disks if d.volume is not None}
    ]


def _check_reseed(host: _Host, action: Action) -> Action:
    """A seed upload: the seed volume of a domain this plan defines next, or of one we manage; its
    image built from the manifests' files with the digest shown; a volume there already only when it
    is the domain's own seed (never another's disk), as the plan saw it."""
    volume, seed, name = action.volume, action.seed, action.domain
    if volume is None or seed is None:
        raise SavedPlanError("it names no volume or no seed")
    if not seed.image:
        raise SavedPlanError("its image was not built from the manifests' files (apply PATH --plan FILE)")
    key = f"{volume.pool}/{volume.name}"
    if volume.name != seed_volume_name(name) or (volume.format, volume.source, volume.mode) != (
        "raw",
        "",
        "",
    ):
        raise SavedPlanError(f"{key} is not the domain's seed volume")
    if action.phase is Phase.CREATE_VOLUME:
        if name in host.seen or name not in host.defining:
            raise SavedPlanError("the domain is not one this plan defines")
        recorded, owned = "", ""
    else:
        _live, parsed = host.managed(name)
        recorded, owned = parsed.owner.seed if parsed.owner else "", owned_seed_pool(parsed)
    found = host.pools.get(volume.pool, {}).get(volume.name)
    if found is not None and (owned != volume.pool or _disk_users(host, key)):
        raise SavedPlanError(f"{key} is there and is not the domain's own seed: it is never written")
    if (found or 0) != volume.previous:
        raise SavedPlanError(f"{key} is not in its pool as the plan saw it")
    if [(c.field, c.before, c.after) for c in action.changes] != [
        (SEED_FIELD, shown(recorded), shown(seed.digest))
    ]:
        raise SavedPlanError("the digests it shows are not the seed it uploads")
    return action


def _check_volume(host: _Host, action: Action) -> Action:
    """A volume action: a volume of the domain's disks, its sizes as the pool has them now, and for a
    delete the volume of a domain this plan undefined whose ownership says it goes with it."""
    volume = action.volume
    if volume is None:
        raise SavedPlanError("it names no volume")
    key = f"{volume.pool}/{volume.name}"
    pool = host.pools.get(volume.pool)
    found = pool.get(volume.name) if pool is not None else None
    if action.kind is ActionKind.DELETE_VOLUME:
        if action.phase is Phase.RESEED:
            _check_detached_seed(host, action.domain, key)
        else:
            gone = host.undefined.get(action.domain)
            owner = gone.owner if gone is not None else None
            seeded = gone is not None and key == f"{owned_seed_pool(gone)}/{seed_volume_name(gone.name)}"
            if not seeded and (owner is None or key not in owner.volumes_to_delete()):
                raise SavedPlanError(f"{key} is not a volume this plan undefines with deleteVolumes: true")
        if found is None or found != volume.previous:
            raise SavedPlanError(f"{key} is not in its pool as the plan saw it")
        return action
    _live, parsed = host.managed(action.domain) if action.domain in host.seen else (None, None)
    used = host.volumes.get(action.domain, set()) | (
        {d.volume.key for d in parsed.spec.disks if d.volume is not None} if parsed is not None else set()
    )
    if key not in used:
        raise SavedPlanError(f"{key} is not a volume of the domain's disks")
    if action.kind is ActionKind.CREATE_VOLUME and found is not None:
        raise SavedPlanError(f"{key} exists already: the plan is older than the host")
    if action.kind is ActionKind.RESIZE_VOLUME and (found != volume.previous or volume.capacity <= found):
        raise SavedPlanError(f"{key} is not {volume.previous} bytes, or would not grow: the plan is stale")
    shown = {(c.before, c.after) for c in action.changes}
    size = (
        format_size(volume.previous) if action.kind is ActionKind.RESIZE_VOLUME else None,
        format_size(volume.capacity),
    )
    if shown != {size}:
        raise SavedPlanError(f"it shows {sorted(shown, key=str)} but changes {key} {size[0]} → {size[1]}")
    return action


def _check_pool(host: _Host, action: Action) -> Action:
    """A pool action: a define of a pool the host lacks, whose XML is the dir or logical pool its
    changes show; or a start or autostart of a pool the host has (never a redefine)."""
    exists = action.domain in host.pools
    if action.xml is None:
        if not exists:
            raise SavedPlanError("the pool is not on the host: nothing to start")
        return action
    if exists:
        raise SavedPlanError("the pool exists already: a define would replace its definition")
    facts = read_pool_xml(action.xml)
    shown = {change.field: change.after for change in action.changes}
    if (facts.name, facts.type, facts.target) != (action.domain, shown.get("type"), shown.get("path")):
        raise SavedPlanError("its XML is not the pool its changes show")
    if facts.type not in ("dir", "logical"):
        raise SavedPlanError(f"a {facts.type} pool is not one a Pool manifest makes")
    return action


_CHECKS: Mapping[ActionKind, Callable[[_Host, Action], Action]] = {
    ActionKind.DEFINE: _check_define,
    ActionKind.UPDATE: _check_update,
    ActionKind.BALLOON: _check_balloon,
    ActionKind.START: _check_target,
    ActionKind.STOP: _check_target,
    ActionKind.UNDEFINE: _check_undefine,
    ActionKind.CREATE_VOLUME: _check_volume,
    ActionKind.RESIZE_VOLUME: _check_volume,
    ActionKind.DELETE_VOLUME: _check_volume,
    ActionKind.POOL: _check_pool,
    ActionKind.RESEED: _check_reseed,
}


def _parse_sent(action: Action, xml: str, *, state: str, autostart: bool) -> ParsedDomain:
    """The XML a define or update sends, read as libvirt will: our domain, with our metadata."""
    parsed = parse_domain(xml, state=state, autostart=autostart)
    if parsed.name != action.domain:
        raise SavedPlanError(f"its XML defines domain {parsed.name!r}")
    if parsed.owner is None:
        raise SavedPlanError("its XML carries no ownership metadata: the domain would not be managed")
    return parsed


def _agree(saved: DomainSpec, sent: DomainSpec, *, ignore: Iterable[str]) -> None:
    """Refuse a spec (what the plan shows and the policy would count) that the XML contradicts. Of
    ``cloudInit`` the XML holds where the seed lives only (its files are input, compared by digest)."""
    skip = set(ignore)
    if saved.cloud_init is not None:
        saved = saved.model_copy(update={"cloud_init": saved.cloud_init.placement()})
    differ = [c for c in spec_changes(saved, sent) if c.field not in skip]
    if differ:
        shown = ", ".join(
            f"{c.field} {c.after!r} in the XML but {c.before!r} in the spec" for c in differ[:4]
        )
        raise SavedPlanError(f"its XML and its spec disagree: {shown}")


def _check_shown(
    action: Action,
    sent: Mapping[str, Any],
    *,
    required: Iterable[str],
    shown_elsewhere: Iterable[str] | None = None,
) -> None:
    """Every change shown must be what the XML sets, and every field it changes must be shown."""
    for change in action.changes:
        if (
            change.field in sent
            and change.field not in _SHOWN_ELSEWHERE
            and sent[change.field] != change.after
        ):
            raise SavedPlanError(
                f"it shows {change.field} → {change.after!r} but its XML sets {sent[change.field]!r}"
            )
    listed = {c.field for c in action.changes} | set(shown_elsewhere or ())
    hidden = sorted(set(required) - listed)
    if hidden:
        raise SavedPlanError(f"its XML changes {', '.join(hidden)} without the plan showing it")


def _size(value: Any) -> int | None:
    try:
        return parse_size(value)
    except (ValueError, TypeError):
        return None
