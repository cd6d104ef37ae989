"""Diff and plan rules on hand-made observations (pure: no libvirt)."""

from pathlib import Path

from lxml import etree

from reconciler.engine.actions import ActionKind, Phase
from reconciler.engine.diff import machine_matches, spec_changes
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, build_host_plan
from reconciler.engine.pruning import DeletionRules
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import Domain, DomainSpec, Owner
from tests.helpers import domain_model, observed_domain

OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
GiB = 1024**3


def domain(name: str, **spec) -> Domain:
    return domain_model(name, **spec)


def live(
    name: str,
    managed: bool = True,
    active: bool = True,
    autostart: bool = False,
    xml: str | None = None,
    **spec,
) -> DomainObservation:
    return observed_domain(
        name, OWNER if managed else None, active=active, autostart=autostart, xml=xml, **spec
    )


def plan(desired: list[Domain], observed: list[DomainObservation], allow_delete: bool = False):
    return build_host_plan(
        DesiredHost(
            "hv1",
            "test:///",
            {d.name: d for d in desired},
            lambda _name: OWNER,
            DeletionRules(allow=allow_delete),
        ),
        HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed)),
    )


def kinds(host_plan):
    return [(a.kind.value, a.domain) for a in host_plan.actions]


def test_converged_host_plans_nothing():
    assert kinds(plan([domain("a", vcpus=2)], [live("a", vcpus=2)])) == []


def test_define_and_start():
    host = plan([domain("a"), domain("b", state="stopped")], [])
    assert kinds(host) == [("define", "a"), ("define", "b"), ("start", "a")]
    assert "<name>a</name>" in host.actions[0].xml


def test_machine_alias_and_generated_mac_are_not_differences():
    xml = render_domain(
        "a",
        DomainSpec.model_validate(
            {
                "memory": "2GiB",
                "machine": "pc-q35-7.2",
                "interfaces": [{"network": "default", "mac": "52:54:00:01:02:03"}],
            }
        ),
        OWNER,
    )
    assert (
        kinds(plan([domain("a", machine="q35", interfaces=[{"network": "default"}])], [live("a", xml=xml)]))
        == []
    )


def test_machine_matching():
    assert machine_matches("pc", "pc-i440fx-7.2")
    assert machine_matches("q35", "pc-q35-7.2")
    assert machine_matches("virt", "virt-7.2")
    assert machine_matches("pc-i440fx-4.0", "pc-i440fx-4.0")
    assert not machine_matches("q35", "pc-i440fx-7.2")
    assert not machine_matches("pc", "pc-q35-7.2")
    assert not machine_matches("virt", "virtual")


def test_balloon_only_change_is_a_balloon_never_an_update():
    host = plan([domain("a", currentMemory="1GiB")], [live("a")])
    assert kinds(host) == [("balloon", "a")]
    [action] = host.actions
    assert action.config_memory == action.live_memory == GiB
    assert action.phase == Phase.BALLOON_DOWN
    assert [(c.field, c.before, c.after) for c in action.changes] == [("currentMemory", "2GiB", "1GiB")]


def test_balloon_of_a_stopped_domain_is_config_only():
    [action] = plan([domain("a", currentMemory="1GiB", state="stopped")], [live("a", active=False)]).actions
    assert action.live_memory is None


def test_memory_growth_updates_with_restart_and_caps_the_live_balloon():
    host = plan([domain("a", memory="4GiB", currentMemory="3GiB")], [live("a")])
    assert kinds(host) == [("update", "a"), ("balloon", "a")]
    update, balloon = host.actions
    assert update.restart and update.phase == Phase.UPDATE_GROW
    assert balloon.phase == Phase.BALLOON_UP
    assert balloon.config_memory == 3 * GiB and balloon.live_memory == 2 * GiB
    assert "capped" in balloon.reason


def test_vcpu_change_of_stopped_domain_needs_no_restart():
    [action] = plan([domain("a", vcpus=4, state="stopped")], [live("a", active=False)]).actions
    assert action.kind is ActionKind.UPDATE and not action.restart
    assert etree.fromstring(action.xml.encode()).findtext("vcpu") == "4"


def test_autostart_only_is_an_update_without_redefine():
    [action] = plan([domain("a", autostart=True)], [live("a")]).actions
    assert action.kind is ActionKind.UPDATE
    assert action.xml is None and action.autostart is True and not action.restart


def test_state_changes():
    assert kinds(plan([domain("a", state="stopped")], [live("a")])) == [("stop", "a")]
    assert kinds(plan([domain("a")], [live("a", active=False)])) == [("start", "a")]


def test_conflict_with_an_unmanaged_domain():
    host = plan([domain("a", vcpus=4)], [live("a", managed=False)])
    assert host.actions == () and host.blocked
    assert [c.domain for c in host.conflicts] == ["a"]


def test_unmanaged_domains_are_never_touched():
    host = plan([], [live("theirs", managed=False)], allow_delete=True)
    assert host.actions == () and host.orphans == () and not host.blocked


def test_orphans_kept_unless_delete_is_allowed():
    kept = plan([], [live("old")])
    assert kept.actions == () and [(o.domain, o.delete) for o in kept.orphans] == [("old", False)]
    removed = plan([], [live("old")], allow_delete=True)
    assert kinds(removed) == [("undefine", "old")]
    assert removed.actions[0].stop_first


def test_unreadable_managed_domain_blocks_the_host():
    broken = live("a").xml.replace("<memory", "<nomemory").replace("</memory>", "</nomemory>")
    host = plan([domain("a")], [DomainObservation("a", broken, True, False)])
    assert host.blocked and "cannot be read" in host.errors[0]


def test_shrink_before_grow_ordering():
    host = plan(
        [
            domain("stopme", state="stopped"),
            domain("down", currentMemory="1GiB"),
            domain("smaller", memory="1GiB", state="stopped"),
            domain("bigger", vcpus=8, state="stopped"),
            domain("new"),
            domain("up", memory="4GiB"),
            domain("startme"),
        ],
        [
            live("orphan"),
            live("stopme"),
            live("down"),
            live("smaller", active=False),
            live("bigger", active=False),
            live("up", memory="4GiB", currentMemory="1GiB"),
            live("startme", active=False),
        ],
        allow_delete=True,
    )
    assert kinds(host) == [
        ("undefine", "orphan"),
        ("stop", "stopme"),
        ("balloon", "down"),
        ("update", "smaller"),
        ("update", "bigger"),
        ("define", "new"),
        ("balloon", "up"),
        ("start", "new"),
        ("start", "startme"),
    ]
    assert [a.phase for a in host.actions] == sorted(a.phase for a in host.actions)


def test_spec_changes_key_disks_by_target():
    a = DomainSpec.model_validate({"memory": "1GiB", "disks": [{"path": "/a"}, {"path": "/b"}]})
    b = DomainSpec.model_validate(
        {"memory": "1GiB", "disks": [{"path": "/b", "target": "vdb"}, {"path": "/a", "target": "vda"}]}
    )
    assert spec_changes(a, b) == ()
    c = DomainSpec.model_validate({"memory": "1GiB", "disks": [{"path": "/a"}, {"path": "/c"}]})
    assert [(x.field, x.before, x.after) for x in spec_changes(a, c)] == [("disks[vdb].path", "/b", "/c")]


def test_a_change_the_merge_refuses_blocks_its_host_instead_of_failing_the_pass():
    """vCPUs assigned to guest NUMA cells cannot be changed from the manifest: an error on that host."""
    xml = (Path(__file__).parents[1] / "golden/merge/vcpus-numa-cells-refused.in.xml").read_text()
    name = "vcpus-numa-cells-refused"
    disk = {"path": f"/var/lib/libvirt/images/{name}.qcow2", "format": "qcow2"}
    wanted = domain(name, vcpus=4, memory="2GiB", disks=[disk], interfaces=[{"network": "default"}])
    host = plan([wanted], [live(name, xml=xml, active=False)])
    assert host.blocked and host.actions == ()
    assert any("cannot be updated" in error and "NUMA" in error for error in host.errors), host.errors


def test_a_domain_another_manifest_root_owns_is_neither_changed_nor_pruned():
    theirs = Owner(manifest="m.yaml", root="git:example.org/team-b/infra:manifests", host="hv1")
    rules = DeletionRules(allow=True, root="git:example.org/team-a/infra:manifests")
    desired = DesiredHost("hv1", "test:///", {"web": domain("web", vcpus=4)}, lambda _n: OWNER, rules)
    observed = [observed_domain("web", theirs, vcpus=1), observed_domain("db", theirs)]
    plan = build_host_plan(desired, HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed)))
    assert plan.actions == () and [c.domain for c in plan.conflicts] == ["web"]
    assert "managed from another manifest root" in plan.conflicts[0].reason
    [orphan] = plan.orphans
    assert orphan.domain == "db" and not orphan.delete and "owned by another manifest root" in orphan.reason


def test_a_subfolder_of_the_owning_root_changes_a_domain_but_keeps_its_root():
    whole = "git:example.org/team-a/infra:manifests"
    ours = Owner(manifest="team-a/web.yaml", root=whole, host="hv1")
    part = DeletionRules(allow=True, root=whole + "/team-a")
    wanted = Owner(manifest="web.yaml", root=whole + "/team-a", host="hv1")
    desired = DesiredHost("hv1", "test:///", {"web": domain("web", vcpus=4)}, lambda _n: wanted, part)
    observed = [observed_domain("web", ours, vcpus=1), observed_domain("db", ours)]
    plan = build_host_plan(desired, HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed)))
    [update] = plan.actions
    assert update.kind is ActionKind.UPDATE and f'root="{whole}"' in (update.xml or "")
    assert [(o.domain, o.delete) for o in plan.orphans] == [("db", False)]
