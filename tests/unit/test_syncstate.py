"""Each domain's sync state and health from real host plans (pure: no libvirt), and the precedence
between the states when several apply."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from reconciler.engine.actions import Action, ActionKind, Conflict, Orphan, Phase
from reconciler.engine.apply import ActionResult
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, HostPlan, build_host_plan
from reconciler.engine.policy import HostPolicy, PolicyReport, RuleResult
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.syncstate import (
    PRECEDENCE,
    DomainState,
    Health,
    Sync,
    domain_states,
    observed_health,
    sync_counts,
)
from reconciler.errors import TemporaryHostError
from reconciler.spec.models import Capacity, Domain, Overcommit, Owner
from tests.helpers import domain_model, observed_domain

OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
GiB = 1024**3


def live(name: str, *, managed: bool = True, active: bool = True, **spec) -> DomainObservation:
    return observed_domain(name, OWNER if managed else None, active=active, **spec)


def plan(
    desired: list[Domain], observed: list[DomainObservation], *, cpus: int = 8, allow_delete: bool = False
) -> HostPlan:
    wanted = DesiredHost(
        "hv1",
        "test:///",
        {d.name: d for d in desired},
        lambda _name: OWNER,
        DeletionRules(allow=allow_delete),
        HostPolicy(Capacity(), Overcommit.model_validate({"cpu": {"ratio": 1.0}})),
    )
    return build_host_plan(wanted, HostObservation(cpus=cpus, memory=16 * GiB, domains=tuple(observed)))


def applied(host: HostPlan, *, failing: str = "") -> list[ActionResult]:
    """Every action of the plan carried out; those of the domain ``failing`` failed."""
    return [
        ActionResult(a, ok=a.domain != failing, detail="boom" if a.domain == failing else "done", seconds=0.0)
        for a in host.actions
    ]


def states(host: HostPlan, results=(), wanted=()) -> dict[str, tuple[str, str]]:
    return {name: (s.sync.value, s.health.value) for name, s in domain_states(host, results, wanted).items()}


# ------------------------------------------------------------------------------ one state at a time


def test_a_converged_managed_domain_is_synced_and_an_unmanaged_one_is_not_listed():
    host = plan([domain_model("web")], [live("web"), live("other", managed=False, active=False)])
    assert domain_states(host) == {"web": DomainState(Sync.SYNCED, Health.RUNNING, "")}


def test_a_planned_define_is_out_of_sync_and_missing_until_applied():
    host = plan([domain_model("web", vcpus=2)], [])
    [(name, state)] = domain_states(host).items()
    assert (name, state.sync, state.health) == ("web", Sync.OUT_OF_SYNC, Health.MISSING)
    assert state.message.startswith("define planned (vcpus None → 2") and "start planned" in state.message
    assert states(host, applied(host)) == {"web": ("synced", "running")}


def test_a_deferred_plan_says_why_its_actions_wait():
    host = replace(
        plan([domain_model("web")], [live("web", active=False)]), deferred="outside the sync windows"
    )
    state = domain_states(host)["web"]
    assert (state.sync, state.health) == (Sync.OUT_OF_SYNC, Health.SHUTOFF)
    assert state.message == "start planned (state stopped → running); waits: outside the sync windows"


def test_an_orphan_kept_says_why_and_one_undefined_leaves_the_list():
    kept = plan([], [live("old"), live("web")], allow_delete=False)
    found = domain_states(kept)
    assert {name: s.sync for name, s in found.items()} == {"old": Sync.ORPHAN, "web": Sync.ORPHAN}
    assert "prune is off" in found["old"].message
    pruned = plan([domain_model("web")], [live("old"), live("web")], allow_delete=True)
    assert states(pruned) == {"old": ("orphan", "running"), "web": ("synced", "running")}
    assert domain_states(pruned)["old"].message == "no longer in git: undefine planned"
    assert states(pruned, applied(pruned)) == {"web": ("synced", "running")}


def test_an_update_applied_while_running_waits_for_a_restart():
    host = plan([domain_model("web", vcpus=2)], [live("web", vcpus=1)])
    assert [(a.kind, a.restart) for a in host.actions] == [(ActionKind.UPDATE, True)]
    assert states(host) == {"web": ("outOfSync", "running")}
    after = domain_states(host, applied(host))["web"]
    assert (after.sync, after.health) == (Sync.PENDING_RESTART, Health.RUNNING)
    assert "next restart" in after.message


def test_a_restart_the_plan_observed_pending_stays_until_the_domain_restarts():
    host = replace(plan([domain_model("web")], [live("web")]), pending_restarts=("web",))
    assert states(host) == {"web": ("pendingRestart", "running")}


def test_a_refused_host_marks_the_domains_it_would_change_refused_only():
    host = plan([domain_model("big", vcpus=12), domain_model("web")], [live("web")], cpus=8)
    assert host.refused
    found = domain_states(host)
    assert (found["big"].sync, found["big"].health) == (Sync.REFUSED, Health.MISSING)
    assert found["big"].message.startswith("refused by the overcommit policy: cpu.")
    assert found["web"].sync is Sync.SYNCED


def test_suspended_domains_are_left_alone_on_purpose():
    host = replace(plan([domain_model("web")], [live("web", active=False)]), actions=(), suspended=("web",))
    assert states(host) == {"web": ("suspended", "shutoff")}


def test_a_conflict_a_failed_action_and_an_unreachable_host_are_errors():
    conflicted = plan([domain_model("web")], [live("web", managed=False)])
    assert (
        domain_states(conflicted)["web"].message
        == "conflict: exists on the host but is not managed by virt-reconcile"
    )
    assert states(conflicted) == {"web": ("error", "running")}

    host = plan([domain_model("web", vcpus=2), domain_model("db")], [])
    found = domain_states(host, applied(host, failing="web"))
    assert (found["web"].sync, found["web"].message) == (Sync.ERROR, "define failed: boom")
    assert found["db"].sync is Sync.SYNCED

    down = HostPlan.failed("hv1", "test:///", TemporaryHostError("hv1", "connection refused"))
    assert states(down, wanted=["web"]) == {"web": ("error", "unknown")}
    assert "connection refused" in domain_states(down, wanted=["web"])["web"].message


def test_an_error_naming_a_domain_is_that_domains_and_a_host_wide_one_blocks_the_others():
    host = plan([domain_model("web"), domain_model("db")], [])
    blocked = replace(
        host, errors=("domain 'web': spec.disks[0].path /x is the disk of 'old'", "would undefine 6")
    )
    found = domain_states(blocked)
    assert found["web"].message == "domain 'web': spec.disks[0].path /x is the disk of 'old'"
    assert found["db"].sync is Sync.ERROR and found["db"].message.startswith(
        "not applied, the host is blocked"
    )
    preflight = replace(host, errors=("db: spec.interfaces[0].network: network 'x' does not exist",))
    assert domain_states(preflight)["db"].message.startswith("db: spec.interfaces[0]")


def test_health_follows_libvirts_lifecycle_state():
    def health(state: str, active: bool = True) -> Health:
        return observed_health(DomainObservation("d", "<domain/>", active, False, state=state))

    assert [health(s) for s in ("running", "paused", "shutoff", "crashed", "pmsuspended")] == [
        Health.RUNNING,
        Health.PAUSED,
        Health.SHUTOFF,
        Health.CRASHED,
        Health.PAUSED,
    ]
    assert health("", active=False) is Health.SHUTOFF and health("nostate") is Health.UNKNOWN
    crashed = replace(live("web"), active=False, state="crashed", reason="panicked")
    assert states(plan([domain_model("web")], [crashed])) == {"web": ("outOfSync", "crashed")}


def test_counts_hold_every_state():
    host = plan([domain_model("web")], [live("old"), live("web")])
    counts = sync_counts(domain_states(host))
    assert set(counts) == set(Sync) and counts[Sync.ORPHAN] == 1 and counts[Sync.SYNCED] == 1
    assert sum(counts.values()) == 2


# --------------------------------------------------------------------------------------- precedence


ACTION = Action(ActionKind.UPDATE, "hv1", "d", Phase.UPDATE_GROW)
RULE = RuleResult("cpu.total", "vCPUs", 8, 10, 10, 8, "floor(8 CPUs × 1.0) = 8", raised=True)


FLAGS = ("has_action", "failed", "conflict", "suspended", "refused", "orphan", "pending", "applied_restart")


@given(st.fixed_dictionaries({flag: st.booleans() for flag in FLAGS}))
def test_the_strongest_state_that_holds_wins(flags):
    has_action, conflict, suspended, refused, orphan, pending = (
        flags[f] for f in ("has_action", "conflict", "suspended", "refused", "orphan", "pending")
    )
    failed = flags["failed"] and has_action
    action = replace(ACTION, restart=flags["applied_restart"])
    host = HostPlan(
        "hv1",
        "test:///",
        actions=(action,) if has_action else (),
        conflicts=(Conflict("hv1", "d", "not ours"),) if conflict else (),
        orphans=(Orphan("hv1", "d", running=True, delete=False, reason="prune is off"),) if orphan else (),
        suspended=("d",) if suspended else (),
        pending_restarts=("d",) if pending else (),
        policy=PolicyReport("enforce", (RULE,)) if refused else None,
        observed=HostObservation(8, 16 * GiB, (live("d"),)),
    )
    results = [ActionResult(action, ok=False, detail="boom", seconds=0.0)] if failed else []
    holds = {
        Sync.ERROR: failed or conflict,
        Sync.SUSPENDED: suspended,
        Sync.REFUSED: refused and has_action,
        Sync.ORPHAN: orphan,
        Sync.OUT_OF_SYNC: has_action,
        Sync.PENDING_RESTART: pending,
        Sync.SYNCED: True,
    }
    expected = next(sync for sync in PRECEDENCE if holds[sync])
    assert domain_states(host, results)["d"].sync is expected


def test_an_applied_restart_flagged_update_is_a_pending_restart_unless_something_stronger_holds():
    action = replace(ACTION, restart=True)
    host = HostPlan("hv1", "test:///", actions=(action,), observed=HostObservation(8, GiB, (live("d"),)))
    done = [ActionResult(action, ok=True, detail="defined", seconds=0.0)]
    assert domain_states(host, done)["d"].sync is Sync.PENDING_RESTART
    assert domain_states(replace(host, suspended=("d",)), done)["d"].sync is Sync.SUSPENDED


def test_the_precedence_is_the_documented_one():
    """Errors first (they need a person), then a suspension, a refusal, an orphan, an action waiting,
    a restart waiting: the order the module's docstring lists, each state once."""
    import re

    from reconciler.engine import syncstate

    listed = re.findall(r"^\d\. ``(\w+)``", syncstate.__doc__ or "", re.MULTILINE)
    assert (
        [sync.value for sync in PRECEDENCE]
        == listed
        == [
            "error",
            "suspended",
            "refused",
            "orphan",
            "outOfSync",
            "pendingRestart",
            "synced",
        ]
    )


def test_the_plan_json_carries_each_domains_state():
    from reconciler.engine.plan import Plan
    from reconciler.report.json_doc import plan_document

    host = plan([domain_model("web", vcpus=2), domain_model("db")], [live("db"), live("old")])
    document = plan_document(Plan("r1", {"hv1": host}))
    assert document["hosts"]["hv1"]["domains"] == {
        "db": {"sync": "synced", "health": "running", "message": ""},
        "old": {
            "sync": "orphan",
            "health": "running",
            "message": "no longer in git, kept: prune is off "
            "(--allow-delete or the host's prune: true removes it)",
        },
        "web": {"sync": "outOfSync", "health": "missing", "message": domain_states(host)["web"].message},
    }
