"""Saved plan actions re-derived against the re-observed host (pure: hand-made observations)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.diff import Change
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, build_host_plan
from reconciler.errors import SavedPlanError
from reconciler.libvirtxml.render import render_domain
from reconciler.offline.recheck import recheck_actions
from reconciler.spec.models import DomainSpec, Owner
from tests.helpers import domain_model, observed_domain

OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
GiB = 1024**3


def host(*domains: DomainObservation) -> HostObservation:
    return HostObservation(cpus=16, memory=64 * GiB, domains=domains)


def planned(observed: HostObservation, **desired: dict) -> list[Action]:
    """A real plan's actions for ``desired`` on ``observed``."""
    domains = {name: domain_model(name, **spec) for name, spec in desired.items()}
    plan = build_host_plan(DesiredHost("hv1", "sandbox:/s.xml", domains, lambda _name: OWNER), observed)
    assert not plan.conflicts and not plan.errors
    return list(plan.actions)


def refuses(observed: HostObservation, actions: list[Action], message: str) -> None:
    with pytest.raises(SavedPlanError, match=message):
        recheck_actions("hv1", observed, actions)


def test_a_real_plan_holds_up_and_its_claims_come_from_the_xml():
    observed = host(
        observed_domain("web", OWNER, vcpus=2), observed_domain("db", OWNER, currentMemory="2GiB")
    )
    actions = planned(observed, web={"vcpus": 4, "memory": "1GiB"}, db={"currentMemory": "1GiB"}, new={})
    kinds = [action.kind for action in actions]
    assert kinds.count(ActionKind.UPDATE) == 2 and ActionKind.BALLOON in kinds and ActionKind.DEFINE in kinds
    rechecked = recheck_actions("hv1", observed, actions)
    assert [a.kind for a in rechecked] == kinds
    define = next(a for a in rechecked if a.kind is ActionKind.DEFINE)
    assert define.spec is not None and define.spec.vcpus == 1 and define.spec.memory == 2 * GiB


def test_a_define_must_be_new_ours_and_exactly_its_spec():
    observed = host(observed_domain("legacy", None))
    define, start = planned(observed, web={})
    assert define.xml is not None and define.spec is not None
    refuses(observed, [replace(define, domain="legacy"), start], "already exists")
    other = render_domain("other", define.spec, OWNER)
    refuses(observed, [replace(define, xml=other)], "its XML defines domain 'other'")
    refuses(observed, [replace(define, xml=render_domain("web", define.spec, None))], "no ownership metadata")
    wide = replace(define, xml=define.xml.replace("<vcpu>1</vcpu>", "<vcpu>64</vcpu>"))
    refuses(observed, [wide], "vcpus 64 in the XML but 1 in the spec")
    extra = define.xml.replace("</domain>", "<seclabel type='none'/></domain>")
    refuses(observed, [replace(define, xml=extra)], "not what its spec renders to")


def test_the_changes_shown_must_be_what_the_xml_does():
    observed = host()
    define, _start = planned(observed, web={"vcpus": 2, "disks": [{"path": "/img/web.qcow2"}]})
    lying = tuple(Change("vcpus", None, 1) if c.field == "vcpus" else c for c in define.changes)
    refuses(observed, [replace(define, changes=lying)], r"it shows vcpus → 1 but its XML sets 2")
    hiding = tuple(c for c in define.changes if not c.field.startswith("disks"))
    refuses(
        observed, [replace(define, changes=hiding)], r"changes disks\[vda\]\.\w+.* without the plan showing"
    )


def test_an_update_must_be_the_observed_definition_merged():
    observed = host(observed_domain("web", OWNER, vcpus=2), observed_domain("legacy", None, vcpus=2))
    (update,) = planned(observed, web={"vcpus": 3})
    assert update.xml is not None
    recheck_actions("hv1", observed, [update])
    refuses(observed, [replace(update, domain="legacy")], "not managed by virt-reconcile")
    injected = update.xml.replace("</devices>", "<hostdev mode='subsystem' type='pci'/></devices>")
    refuses(observed, [replace(update, xml=injected)], "not the host's definition with the plan's fields")
    refuses(observed, [replace(update, changes=())], "changes vcpus without the plan showing it")


def test_start_stop_balloon_and_undefine_touch_only_managed_domains():
    observed = host(
        observed_domain("web", OWNER),
        observed_domain("legacy", None),
        observed_domain("kept", OWNER.model_copy(update={"deletion_protection": True})),
        observed_domain("theirs", OWNER.model_copy(update={"host": "hv2"})),
    )
    for kind, phase in [(ActionKind.STOP, Phase.STOP), (ActionKind.START, Phase.START)]:
        refuses(observed, [Action(kind, "hv1", "legacy", phase)], "not managed")
        refuses(observed, [Action(kind, "hv1", "ghost", phase)], "not on the host")
        recheck_actions("hv1", observed, [Action(kind, "hv1", "web", phase)])
    undefine = Action(ActionKind.UNDEFINE, "hv1", "web", Phase.UNDEFINE)
    recheck_actions("hv1", observed, [undefine])
    refuses(observed, [undefine, Action(ActionKind.START, "hv1", "web", Phase.START)], "not on the host")
    refuses(observed, [replace(undefine, domain="legacy")], "not managed")
    refuses(observed, [replace(undefine, domain="kept")], "protected from deletion")
    refuses(observed, [replace(undefine, domain="theirs")], "host entry 'hv2'")
    balloon = Action(
        ActionKind.BALLOON,
        "hv1",
        "web",
        Phase.BALLOON_DOWN,
        (Change("currentMemory", "2GiB", "1GiB"),),
        config_memory=GiB,
        live_memory=GiB,
    )
    recheck_actions("hv1", observed, [balloon])
    refuses(observed, [replace(balloon, config_memory=GiB // 2, live_memory=None)], "sets currentMemory")
    refuses(observed, [replace(balloon, live_memory=2 * GiB)], "not valid")


def test_actions_keep_their_host_and_the_apply_order():
    observed = host()
    define, start = planned(observed, web={})
    refuses(observed, [start, define], "phase DEFINE after phase START")
    refuses(
        observed, [replace(define, phase=Phase.UNDEFINE), start], "a define does not run in phase UNDEFINE"
    )
    refuses(observed, [define, replace(start, host="hv2")], "it names host 'hv2'")
    spec = DomainSpec.model_validate({"memory": "1GiB"})
    refuses(observed, [replace(define, xml=None, spec=spec)], "no XML")
