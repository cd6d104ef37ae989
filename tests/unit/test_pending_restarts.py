"""Pending restarts (pure): a redefine of a running domain that needs a restart marks its ownership
with the running instance; later plans report the domain as waiting while what runs was started
from an older definition (its live XML's ownership, not its domain id, which repeats after a
reboot), and ``restart_pending`` turns each into a restart action, shown by every plan format."""

from __future__ import annotations

import json
from dataclasses import replace

from lxml import etree

from reconciler.engine.actions import ActionKind, Phase
from reconciler.engine.domainplan import MAX_WAITS_TEXT, merged_waits
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.pruning import DeletionRules
from reconciler.libvirtxml.ownership import (
    OWNER_NS,
    definition_key,
    read_owner,
    running_definition,
    write_owner,
)
from reconciler.libvirtxml.parse import parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.offline.snapshot import SnapshotHypervisor, snapshot_host
from reconciler.report import Printer, plan_document, render_markdown, render_text, summary_line
from reconciler.spec.models import Capacity, Domain, Overcommit, Owner
from tests.helpers import domain_model, observed_domain

OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
GiB = 1024**3
RUNNING_ID = 7


def desired_host(domains: list[Domain], *, restart_pending: bool = False, cpus: int = 8) -> DesiredHost:
    by_name = {d.name: d for d in domains}
    return DesiredHost(
        "hv1",
        "test:///",
        by_name,
        lambda name: OWNER.model_copy(update={"deletion_protection": by_name[name].spec.deletion_protection}),
        DeletionRules(),
        HostPolicy(Capacity(), Overcommit()),
        restart_pending=restart_pending,
    )


def plan(domains: list[Domain], observed: list[DomainObservation], **options: object) -> HostPlan:
    host = HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed))
    return build_host_plan(desired_host(domains, **options), host)  # type: ignore[arg-type]


def running(name: str = "web", *, instance: int = RUNNING_ID, **spec: object) -> DomainObservation:
    seen = observed_domain(name, OWNER, **spec)
    return replace(seen, state="running", instance=instance)


def applied(observed: DomainObservation, host_plan: HostPlan) -> DomainObservation:
    """The domain as libvirt holds it once the plan's last update is defined (it keeps running)."""
    xml = [a.xml for a in host_plan.actions if a.kind is ActionKind.UPDATE and a.xml][-1]
    assert xml is not None
    return replace(observed, xml=xml)


def waiting_web() -> tuple[DomainObservation, Domain]:
    """web ran with 2 vCPUs; git lowered them to 1 and the update was applied while it ran."""
    before = running(vcpus=2)
    lowered = domain_model("web", vcpus=1)
    return applied(before, plan([lowered], [before])), lowered


def test_an_update_that_needs_a_restart_marks_the_running_instance():
    update = plan([domain_model("web", vcpus=1)], [running(vcpus=2)]).actions[0]
    assert update.kind is ActionKind.UPDATE and update.restart
    owner = parse_domain(update.xml or "").owner
    assert owner is not None
    assert (owner.restart_instance, owner.restart_waits) == (RUNNING_ID, "vcpus 2 → 1")


def test_a_stopped_domain_or_one_about_to_stop_gets_no_mark():
    stopped = plan([domain_model("web", vcpus=1, state="stopped")], [running(vcpus=2, active=False)])
    stopping = plan([domain_model("web", vcpus=1, state="stopped")], [running(vcpus=2)])
    for host in (stopped, stopping):
        update = next(a for a in host.actions if a.kind is ActionKind.UPDATE)
        assert not update.restart and f'xmlns:vr="{OWNER_NS}"' in (update.xml or "")
        assert 'restartInstance="' not in (update.xml or "")


def test_the_pending_restart_is_reported_and_is_not_a_change():
    observed, lowered = waiting_web()
    host = plan([lowered], [observed])
    assert host.actions == () and host.pending_restarts == ("web",)
    assert host.restart_waits == {"web": "vcpus 2 → 1"}
    whole = Plan(hosts={"hv1": host})
    assert not whole.has_changes and not whole.has_errors  # plan exits 0: nothing to apply
    assert summary_line(whole) == (
        "No changes: every host matches the manifests. "
        "1 domain(s) waiting for a restart (apply --restart-pending)."
    )


def test_a_restart_ends_the_wait_a_reboot_inside_the_guest_does_not():
    observed, lowered = waiting_web()
    rebooted_inside = replace(observed)  # the same QEMU process: the same domain id
    restarted = replace(observed, instance=RUNNING_ID + 1)
    shut_off = replace(observed, active=False, state="shutoff", reason="shutdown", instance=-1)
    assert plan([lowered], [rebooted_inside]).pending_restarts == ("web",)
    assert plan([lowered], [restarted]).pending_restarts == ()
    assert plan([lowered], [shut_off]).pending_restarts == ()


def test_a_later_update_carries_the_mark_on_from_what_runs():
    observed, _ = waiting_web()
    raised = plan([domain_model("web", vcpus=3)], [observed])
    update = raised.actions[0]
    owner = parse_domain(update.xml or "").owner
    assert owner is not None and update.restart
    assert (owner.restart_instance, owner.restart_waits) == (RUNNING_ID, "vcpus 2 → 3")
    assert raised.pending_restarts == ("web",)  # observed waiting until this update is applied


def test_going_back_to_what_runs_clears_the_mark():
    observed, _ = waiting_web()
    back = plan([domain_model("web", vcpus=2)], [observed])
    update = back.actions[0]
    owner = parse_domain(update.xml or "").owner
    assert owner is not None and not update.restart
    assert (owner.restart_instance, owner.restart_waits) == (-1, "")
    assert plan([domain_model("web", vcpus=2)], [applied(observed, back)]).pending_restarts == ()


def test_a_redefine_that_needs_no_restart_keeps_the_mark():
    observed, _ = waiting_web()
    protected = plan([domain_model("web", vcpus=1, deletionProtection=True)], [observed])
    update = protected.actions[0]
    assert not update.restart
    again = plan([domain_model("web", vcpus=1, deletionProtection=True)], [applied(observed, protected)])
    assert again.actions == () and again.restart_waits == {"web": "vcpus 2 → 1"}


def test_restart_pending_restarts_last_and_changes_no_usage():
    observed, lowered = waiting_web()
    other = running("db", instance=3, vcpus=1)
    host = plan([lowered, domain_model("db", vcpus=1)], [observed, other], restart_pending=True)
    [restart] = host.actions
    assert (restart.kind, restart.domain, restart.phase) == (ActionKind.RESTART, "web", Phase.RESTART)
    assert restart.reason == "vcpus 2 → 1" and host.pending_restarts == ()
    assert host.policy is not None
    assert all(rule.before == rule.after for rule in host.policy.rules)


def test_restart_pending_restarts_after_this_plans_own_update():
    host = plan([domain_model("web", vcpus=1)], [running(vcpus=2)], restart_pending=True)
    assert [(a.kind, a.domain) for a in host.actions] == [
        (ActionKind.UPDATE, "web"),
        (ActionKind.RESTART, "web"),
    ]
    assert host.actions[-1].phase == max(a.phase for a in host.actions)


def test_a_domain_without_a_known_instance_gets_no_mark_but_its_update_says_restart():
    update = plan([domain_model("web", vcpus=1)], [running(vcpus=2, instance=-1)]).actions[0]
    owner = parse_domain(update.xml or "").owner
    assert update.restart and owner is not None and owner.restart_instance == -1


def test_the_mark_survives_the_xml_and_a_bad_one_reads_as_none():
    marked = OWNER.model_copy(update={"restart_instance": 12, "restart_waits": 'memory 2GiB → 1GiB; x "<&>"'})
    root = etree.fromstring(b"<domain><name>a</name></domain>")
    write_owner(root, marked)
    assert read_owner(root.find("metadata")) == marked
    for bad in ("-3", "12a", "１２", "99999999999"):
        element = root.find(f"metadata/{{{OWNER_NS}}}owner")
        assert element is not None
        element.set("restartInstance", bad)
        owner = read_owner(root.find("metadata"))
        assert owner is not None and owner.restart_instance == -1, bad


def test_merged_waits_keeps_what_runs_and_cuts_long_text():
    from reconciler.engine.diff import Change

    assert merged_waits(None, [Change("memory", "2GiB", "1GiB")]) == "memory 2GiB → 1GiB"
    earlier = "vcpus 2 → 1; by hand"
    assert merged_waits(earlier, [Change("vcpus", 1, 4)]) == "by hand; vcpus 2 → 4"
    assert merged_waits(earlier, [Change("vcpus", 1, 2)]) == "by hand"
    many = [Change(f"disks[vd{i}].path", None, "/x" * 40) for i in range(40)]
    long = merged_waits(None, many)
    assert len(long) == MAX_WAITS_TEXT and long.endswith("…")


def test_a_plan_from_a_snapshot_sees_the_same_pending_restart():
    observed, lowered = waiting_web()
    live = HostObservation(cpus=8, memory=16 * GiB, domains=(observed,))
    recorded = snapshot_host("test:///", live).model_dump_json(by_alias=True)
    from reconciler.offline.snapshot import SnapshotHost

    offline = SnapshotHypervisor("hv1", SnapshotHost.model_validate_json(recorded)).observe()
    assert offline == live
    assert build_host_plan(desired_host([lowered]), offline).pending_restarts == ("web",)


def rendered(host: HostPlan) -> tuple[str, str, dict[str, object]]:
    import io

    whole = Plan(revision="r1", hosts={"hv1": host})
    text = io.StringIO()
    render_text(whole, Printer(text, color=False))
    return text.getvalue(), render_markdown(whole), plan_document(whole)


def test_every_plan_format_shows_the_pending_restart():
    observed, lowered = waiting_web()
    text, markdown, document = rendered(plan([lowered], [observed]))
    assert "⟳ pending restart web: vcpus 2 → 1" in text
    assert "**Pending restart** `web`: vcpus 2 → 1" in markdown
    hosts = document["hosts"]
    assert isinstance(hosts, dict)
    assert hosts["hv1"]["pendingRestarts"] == ["web"]
    assert hosts["hv1"]["restartWaits"] == {"web": "vcpus 2 → 1"}
    assert document["summary"]["pendingRestarts"] == 1  # type: ignore[index]
    assert document["changes"] is False


def test_every_plan_format_shows_the_restart():
    observed, lowered = waiting_web()
    text, markdown, document = rendered(plan([lowered], [observed], restart_pending=True))
    assert "⟳ restart web  (vcpus 2 → 1)" in text and "pending restart" not in text
    assert "1 to restart" in text
    assert "| `⟳` | restart | `web` | vcpus 2 → 1 | now |" in markdown
    actions = document["actions"]
    assert isinstance(actions, list)
    assert [(a["action"], a["domain"], a["reason"]) for a in actions] == [("restart", "web", "vcpus 2 → 1")]
    assert json.dumps(document)  # JSON-ready


# ------------------------------------------------------------- what runs, told without the domain id


def started_from(observed: DomainObservation, definition_xml: str) -> DomainObservation:
    """``observed`` as the adapter reports it when its live XML is ``definition_xml``'s definition."""
    return replace(observed, running_definition=running_definition(definition_xml))


def test_after_a_reboot_the_same_id_running_the_marked_definition_is_no_pending_restart():
    # The host rebooted (or libvirtd restarted): autostart started web from its marked definition,
    # and handed it the very id the mark recorded. The id alone would still read as waiting.
    observed, lowered = waiting_web()
    assert observed.instance == RUNNING_ID
    rebooted = started_from(observed, observed.xml)
    assert plan([lowered], [rebooted]).pending_restarts == ()
    assert plan([lowered], [rebooted], restart_pending=True).actions == ()


def test_a_live_definition_older_than_the_mark_is_pending_whatever_the_id():
    before = running(vcpus=2)
    observed, lowered = waiting_web()
    for instance in (RUNNING_ID, RUNNING_ID + 40, 1):
        still = started_from(replace(observed, instance=instance), before.xml)
        assert plan([lowered], [still]).restart_waits == {"web": "vcpus 2 → 1"}, instance


def test_a_domain_adopted_while_it_ran_has_no_owner_in_its_live_xml_and_waits():
    observed, lowered = waiting_web()
    unowned = render_domain("web", domain_model("web", vcpus=2).spec, None)
    assert plan([lowered], [started_from(observed, unowned)]).pending_restarts == ("web",)
    assert running_definition(unowned) == ""


def test_the_definition_key_ignores_the_id_and_metadata_only_writes():
    marked = OWNER.model_copy(update={"restart_instance": 7, "restart_waits": "vcpus 2 → 1"})
    key = definition_key(marked)
    for same in (
        {"restart_instance": 1},
        {"off_on_purpose": "destroyed"},
        {"pending": True, "pending_until": "2030-01-01T00:00:00Z"},
    ):
        assert definition_key(marked.model_copy(update=same)) == key, same
    for other in ({"spec_hash": "h2"}, {"revision": "r2"}, {"restart_waits": "vcpus 2 → 3"}):
        assert definition_key(marked.model_copy(update=other)) != key, other
    assert definition_key(None) == ""


def test_a_snapshot_keeps_what_runs_and_its_fingerprint_moves_with_it():
    from reconciler.offline.snapshot import SnapshotHost, fingerprint

    observed, lowered = waiting_web()
    before = running(vcpus=2)
    waiting = started_from(observed, before.xml)
    live = HostObservation(cpus=8, memory=16 * GiB, domains=(waiting,))
    recorded = snapshot_host("test:///", live).model_dump_json(by_alias=True)
    assert '"runningDefinition":"' in recorded
    offline = SnapshotHypervisor("hv1", SnapshotHost.model_validate_json(recorded)).observe()
    assert offline == live
    assert build_host_plan(desired_host([lowered]), offline).pending_restarts == ("web",)
    restarted = HostObservation(cpus=8, memory=16 * GiB, domains=(started_from(observed, observed.xml),))
    assert fingerprint(restarted) != fingerprint(live)  # the same id, another definition running
