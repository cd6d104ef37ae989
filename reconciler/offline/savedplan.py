"""Saved plans: ``plan --out FILE`` writes one, ``apply --plan FILE`` carries out exactly its actions.

A saved plan records, per host, the fingerprint of the observed state it was made from (and of the
host's URI), the host's URI, capacity and overcommit policy (so the policy can be re-checked at
apply time without the manifests), and every action with all it needs to run (the XML to define,
balloon targets...). Apply re-observes each host first; any host whose state moved makes the whole
plan stale. A cloud-init seed upload is saved by its digest only (the image holds the user-data): its
image is built again from the manifests' files at apply time, which must still give that digest.

A saved plan file is trusted for nothing. It is signed with an HMAC-SHA256 over a canonical form
of the whole document under the reconciler's plan signing key (:mod:`reconciler.files.keys`), and
apply refuses a file without a signature, with a wrong one, or signed by another key. Independently
of the signature, every action is re-derived against the re-observed host before anything runs
(:mod:`reconciler.offline.recheck`), so what is sent is what the plan shows and the policy checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from reconciler.engine.actions import Action, ActionKind, Conflict, Phase, SeedUpload, VolumeChange
from reconciler.engine.apply import (
    DEFAULT_SETTINGS,
    NO_HOOKS,
    ActionResult,
    ApplySettings,
    Hooks,
    InOrder,
    apply_host_plan,
)
from reconciler.engine.diff import Change
from reconciler.engine.hypervisor import HostObservation
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.reconcile import Outcome
from reconciler.engine.seediso import build_seed_iso
from reconciler.engine.sessions import DEFAULT_HOST_PARALLEL, Connector, HostSessions, in_key_order
from reconciler.errors import HostError, SavedPlanError, StalePlanError
from reconciler.files.atomic import write_atomically
from reconciler.files.keys import KEY_FILE_ENV, SigningKey
from reconciler.offline.recheck import recheck_actions
from reconciler.offline.snapshot import fingerprint
from reconciler.report import plan_document
from reconciler.spec.cloudinit import DIGEST_DIGITS, Seed
from reconciler.spec.hostpolicy import Capacity, Overcommit
from reconciler.spec.models import DomainSpec, Host, HostSpec, Owner, Timeouts
from reconciler.spec.storage import PoolOvercommit

KIND = "virt-reconcile/saved-plan"
FORMAT_VERSION = 2  # 2: apply phases renumbered for storage
ALGORITHM = "HMAC-SHA256"


@dataclass(frozen=True)
class SavedHost:
    """One host of a saved plan."""

    uri: str
    fingerprint: str
    capacity: Capacity
    overcommit: Overcommit
    actions: list[Action]
    conflicts: tuple[Conflict, ...] = ()  # what blocked the host when planned: it stays blocked
    errors: tuple[str, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)  # a plan saved before timeouts: the defaults
    pools: dict[str, float] = field(default_factory=dict)  # each Pool's storage.commit ratio

    def host(self, name: str) -> Host:
        """The Host entry to connect to and judge the policy with, as the plan was made against."""
        return Host.model_validate(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Host",
                "metadata": {"name": name},
                "spec": {
                    "uri": self.uri,
                    "capacity": self.capacity.model_dump(by_alias=True, mode="json"),
                    "overcommit": self.overcommit.model_dump(by_alias=True, mode="json"),
                    "timeouts": self.timeouts.model_dump(by_alias=True, mode="json"),
                },
            }
        )


@dataclass(frozen=True)
class SavedPlan:
    """A saved plan as loaded back (and verified): ``source`` is the file, named in refusals."""

    revision: str
    hosts: dict[str, SavedHost]
    source: Path | None = None


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
        "volume": asdict(action.volume) if action.volume is not None else None,
        "seed": action.seed.digest if action.seed is not None else None,  # never the image (user-data)
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
        volume=_load_volume(data.get("volume")),
        seed=_load_seed(data.get("seed")),
    )


def _load_seed(digest: Any) -> SeedUpload | None:
    """A reseed's seed as saved: its digest only; the image is built again from the manifests'
    files at apply time (:func:`with_seed_images`), and only when they still have that digest."""
    if digest is None:
        return None
    if not (isinstance(digest, str) and len(digest) == DIGEST_DIGITS and digest.isalnum()):
        raise SavedPlanError("a reseed's seed is not a digest")
    return SeedUpload(digest, b"")


def with_seed_images(saved: SavedPlan, seeds: Callable[[str, str], Seed | None]) -> SavedPlan:
    """``saved`` with the image of each seed it uploads built from ``seeds(host, domain)`` (the
    manifests' files, read now); refused when the files are gone or hold another seed than the one
    the plan shows, since its digest is all a saved plan holds of a seed."""
    problems: list[str] = []
    hosts = {
        name: replace(host, actions=[_with_image(name, action, seeds, problems) for action in host.actions])
        for name, host in saved.hosts.items()
    }
    if problems:
        raise SavedPlanError(
            f"{saved.source or 'the saved plan'}: the cloud-init seeds are not the ones the plan was made "
            f"with ({'; '.join(problems)}): nothing was applied (give the manifests it was made from, or "
            "plan again)"
        )
    return replace(saved, hosts=hosts)


def _with_image(
    host: str, action: Action, seeds: Callable[[str, str], Seed | None], problems: list[str]
) -> Action:
    """A reseed with its image built from the seed of the manifests, when it has the saved digest
    (else the action as it is, and the problem noted); any other action as it is."""
    if action.seed is None:
        return action
    seed = seeds(host, action.domain)
    if seed is None or seed.digest != action.seed.digest:
        now = f"sha256:{seed.digest}" if seed is not None else "no cloudInit"
        problems.append(f"{host}/{action.domain}: sha256:{action.seed.digest} planned, {now} now")
        return action
    return replace(action, seed=SeedUpload(seed.digest, build_seed_iso(seed)))


def _load_volume(data: Any) -> VolumeChange | None:
    """A volume action's volume; a document that holds something else is not a saved plan."""
    if data is None:
        return None
    types = {f.name: int if f.type == "int" else str for f in fields(VolumeChange)}
    if not (
        isinstance(data, dict)
        and set(data) == set(types)
        and all(type(data[name]) is kind for name, kind in types.items())  # a bool is no size
    ):
        raise SavedPlanError("a volume action's volume is not what a saved plan holds")
    return VolumeChange(**data)


def host_fingerprint(uri: str, observed: HostObservation) -> str:
    """The observed state's fingerprint, bound to the URI it was observed at: a plan pointed at
    another host whose state happens to look the same is stale, not applied there."""
    return hashlib.sha256(json.dumps([uri, fingerprint(observed)]).encode()).hexdigest()


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the whole document but its signature, in one fixed form
    (sorted keys, no spaces), so re-indenting a file keeps its signature and any edit breaks it."""
    body = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def signature(document: dict[str, Any], key: SigningKey) -> dict[str, str]:
    """The ``signature`` entry of a saved plan document."""
    return {"algorithm": ALGORITHM, "keyId": key.key_id, "value": key.sign(canonical(document))}


def verify_signature(document: dict[str, Any], key: SigningKey, source: Path) -> None:
    """Refuse a document that ``key`` did not sign exactly as it is, saying which way it fails."""
    signed = document.get("signature")
    refusing = "refusing to apply it"
    if signed is None:
        raise SavedPlanError(
            f"{source}: the saved plan is not signed; {refusing} (`virt-reconcile plan --out` signs plans)"
        )
    if not isinstance(signed, dict) or signed.get("algorithm") != ALGORITHM:
        raise SavedPlanError(f"{source}: the saved plan's signature is not an {ALGORITHM} one; {refusing}")
    value = signed.get("value")
    if isinstance(value, str) and key.verifies(canonical(document), value):
        return
    if signed.get("keyId") != key.key_id:
        raise SavedPlanError(
            f"{source}: the saved plan was signed with another key (key id {str(signed.get('keyId'))[:32]!r}"
            f", not {key.key_id!r} of {key.path}); {refusing}. To apply plans made on another machine, set "
            f"{KEY_FILE_ENV} to the key file they are signed with"
        )
    raise SavedPlanError(
        f"{source}: the saved plan does not match its signature: it was changed after it was saved; "
        + refusing
    )


def save_plan(
    path: Path,
    plan: Plan,
    *,
    specs: Mapping[str, HostSpec],
    key: SigningKey,
    pools: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """Write and sign ``plan`` with everything ``apply --plan`` needs (each host's address, policy
    and timeouts from ``specs``, each Pool's ratio from ``pools``), for every host of ``specs`` that
    could be observed. A plan with a
    move is refused: a move spans two hosts and must be re-derived from the manifests (plain
    ``apply``), not replayed."""
    moves = sorted({a.domain for a in plan.actions if a.kind is ActionKind.MOVE})
    if moves:
        raise SavedPlanError(
            f"{path}: not saved: the plan moves {', '.join(moves)} between hosts, which a saved plan "
            "cannot carry; apply it with plain `apply`"
        )
    hosts = {
        name: {
            "uri": host.uri,
            "fingerprint": host_fingerprint(host.uri, host.observed),
            "capacity": specs[name].capacity.model_dump(mode="json", by_alias=True),
            "overcommit": specs[name].overcommit.model_dump(mode="json", by_alias=True),
            "timeouts": specs[name].timeouts.model_dump(mode="json", by_alias=True),
            "poolRatios": dict((pools or {}).get(name, {})),
            "actions": [_action(action) for action in host.actions],
            "conflicts": [[conflict.domain, conflict.reason] for conflict in host.conflicts],
            "errors": list(host.errors),
        }
        for name, host in plan.hosts.items()
        if name in specs and host.observed is not None
    }
    document = {
        "kind": KIND,
        "formatVersion": FORMAT_VERSION,
        "revision": plan.revision,
        "hosts": hosts,
        "plan": plan_document(plan),
    }
    document = json.loads(json.dumps(document))  # signed as it will be read back (tuples as lists)
    document["signature"] = signature(document, key)
    # Readable by all, as files were before: a saved plan holds no secret, and it is signed.
    write_atomically(path, json.dumps(document, indent=2) + "\n", mode=0o644)


def load_plan(path: Path, key: Callable[[], SigningKey]) -> SavedPlan:
    """Read a saved plan back, refusing anything but a well-formed plan that ``key()`` signed.

    The key is only looked for once the file reads as a saved plan, so a wrong file is named as such.
    """
    document = _read_document(path)
    try:
        verifier = key()
    except SavedPlanError as err:
        raise SavedPlanError(f"{path}: cannot check the saved plan's signature: {err}") from err
    verify_signature(document, verifier, path)
    try:
        shown = document["plan"]["hosts"]
        hosts = {}
        for name, host in document["hosts"].items():
            if shown[name]["uri"] != host["uri"]:
                raise SavedPlanError(
                    f"{path}: host {name}: the URI to apply on ({host['uri']}) is not the one the plan "
                    f"shows ({shown[name]['uri']}); refusing to apply it"
                )
            hosts[name] = SavedHost(
                uri=host["uri"],
                fingerprint=host["fingerprint"],
                capacity=Capacity.model_validate(host["capacity"]),
                overcommit=Overcommit.model_validate(host["overcommit"]),
                timeouts=Timeouts.model_validate(host.get("timeouts", {})),
                pools={str(pool): _ratio(ratio) for pool, ratio in host.get("poolRatios", {}).items()},
                actions=[_load_action(action) for action in host["actions"]],
                conflicts=tuple(Conflict(name, domain, reason) for domain, reason in host["conflicts"]),
                errors=tuple(str(error) for error in host["errors"]),
            )
            hosts[name].host(name)  # a URI or policy that makes no Host entry is refused here
    except (ValueError, KeyError, TypeError) as err:
        raise SavedPlanError(f"{path}: not a saved virt-reconcile plan: {err}") from err
    return SavedPlan(revision=str(document.get("revision", "")), hosts=hosts, source=path)


def _ratio(value: Any) -> float:
    """A pool's saved storage.commit ratio, held to what a Pool manifest may say."""
    return PoolOvercommit.model_validate({"ratio": value}).ratio


def _read_document(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            kind = data.get("kind") if isinstance(data, dict) else None
            raise ValueError(f"kind is {kind!r}, not {KIND!r}")
    except (OSError, ValueError) as err:
        raise SavedPlanError(f"{path}: not a saved virt-reconcile plan: {err}") from err
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def apply_saved(
    saved: SavedPlan,
    connect: Connector,
    settings: ApplySettings = DEFAULT_SETTINGS,
    hooks: Hooks = NO_HOOKS,
    *,
    host_parallel: int = DEFAULT_HOST_PARALLEL,
) -> Outcome:
    """Apply exactly the actions of a saved plan, after checking no host moved, every action holds
    up against the host it will run on, and the policy holds.

    Every host is opened, locked and observed (side by side, locks in the global order's rules of
    :class:`HostSessions`) and checked before anything changes: a host that could not be reached,
    one stale host, or one action that does not hold up refuses the whole plan. The hosts are then
    applied side by side, ``host_parallel`` at once: a saved plan holds no move, so no host's
    actions wait on another's; each host runs :func:`apply_host_plan`, its results shown grouped
    by host in the plan's order.
    """
    outcome = Outcome(Plan(revision=saved.revision))
    names = list(saved.hosts)  # the plan's order: plans and results are shown in it
    with HostSessions(connect, write=True, parallel=host_parallel) as sessions:
        sessions.open([saved.hosts[name].host(name) for name in names])
        _raise_host_errors(sessions.errors, saved)  # a host not reached: the plan is refused
        outcome.plan.hosts.update(_checked(saved, sessions.observed))
        for host_plan in outcome.plan.hosts.values():
            if hooks.on_plan is not None:
                hooks.on_plan(host_plan)
        leaving = [
            a
            for host in outcome.plan.hosts.values()
            if not host.blocked
            for a in host.actions
            if a.asks_first
        ]
        outcome.cancelled = bool(leaving) and hooks.confirm is not None and not hooks.confirm(leaving)
        in_order = InOrder(names, hooks)

        def apply_one(name: str) -> list[ActionResult]:
            seen = in_order.hooks(name)
            try:
                return apply_host_plan(sessions.hypervisors[name], outcome.plan.hosts[name], settings, seen)
            finally:
                seen.finished()

        if not outcome.cancelled:
            outcome.results = sessions.each(names, apply_one)
    _raise_host_errors(sessions.late_errors, saved)  # a host failed as it closed (a sandbox saving)
    return outcome


def _raise_host_errors(errors: Mapping[str, HostError], saved: SavedPlan) -> None:
    """Raise the hosts' errors, if any, as when hosts were opened and closed one by one: a single
    one as it is; several in one error of the first one's kind naming every host, the first in the
    global lock order first. Raised before anything is applied, it refuses the whole plan."""
    failed = [errors[name] for name in _in_lock_order(saved) if name in errors]
    if not failed:
        return
    first = failed[0]
    if len(failed) == 1:
        raise first
    told = str(first).removeprefix(f"{first.host}: ")
    raise type(first)(first.host, "; ".join([told, *(str(error) for error in failed[1:])])) from first


def _in_lock_order(saved: SavedPlan) -> list[str]:
    """The plan's hosts in the one global order every apply locks them in."""
    return [host.name for host in in_key_order(entry.host(name) for name, entry in saved.hosts.items())]


def _checked(saved: SavedPlan, observed: Mapping[str, HostObservation]) -> dict[str, HostPlan]:
    """Every host's plan re-derived on its observed state, in the plan's order; the whole plan
    refused when an action does not hold up on some host, or some host is stale."""
    plans: dict[str, HostPlan] = {}
    stale, refused = [], []
    for name in _in_lock_order(saved):  # refusals listed as when hosts were checked one by one
        try:
            host_plan = _recheck(name, saved.hosts[name], observed[name])
        except SavedPlanError as err:
            refused.append(f"{name}: {err}")
            continue
        if host_plan is None:
            stale.append(name)
        else:
            plans[name] = host_plan
    source = saved.source or "the saved plan"
    if refused:
        raise SavedPlanError(f"{source}: refusing the saved plan, nothing was applied: " + "; ".join(refused))
    if stale:
        raise StalePlanError(
            f"{source}: the saved plan is stale: {', '.join(stale)} changed since it was made; nothing "
            "was applied (plan again)"
        )
    return {name: plans[name] for name in saved.hosts}


def _recheck(name: str, entry: SavedHost, observed: HostObservation) -> HostPlan | None:
    """One host's plan re-derived on its observed state (None: stale), the policy judged on what
    the actions will really send; a host blocked when planned (a conflict, an error) stays blocked."""
    if host_fingerprint(entry.uri, observed) != entry.fingerprint:
        return None
    actions = recheck_actions(name, observed, entry.actions)
    current = build_host_plan(DesiredHost(name, entry.uri, {}, _no_owner), observed)
    policy = HostPolicy(entry.capacity, entry.overcommit, entry.pools)
    return replace(
        current,
        actions=actions,
        orphans=(),  # the plan re-derived here wants nothing: its "orphans" are every managed domain
        conflicts=current.conflicts + entry.conflicts,
        errors=current.errors + entry.errors,
        policy=policy.judge(observed, current.before, actions),
    )


def _no_owner(name: str) -> Owner:
    raise AssertionError(f"nothing is defined while re-observing for a saved plan ({name})")
