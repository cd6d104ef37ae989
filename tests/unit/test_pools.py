"""The Pool kind: loading (file, line and field in every error), its XML, the pool actions a plan
makes, how every plan format shows them, and how a sandbox state file keeps pools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.adapters.sandbox import SandboxPool, compose_node_xml, new_node_xml, pool_marks
from reconciler.engine.actions import ActionKind, Phase
from reconciler.engine.hypervisor import HostObservation, PoolObservation
from reconciler.engine.plan import DesiredHost, Plan, build_host_plan
from reconciler.engine.pools import plan_pools
from reconciler.errors import ManifestError
from reconciler.libvirtxml.pools import read_pool_xml, read_volume_xml, render_pool
from reconciler.report.json_doc import plan_document
from reconciler.report.markdown import render_markdown
from reconciler.report.printer import Printer
from reconciler.report.summary import summary_line
from reconciler.report.text import render_text
from reconciler.spec.manifests import load_manifests
from reconciler.spec.storage import Pool
from tests.helpers import host_yaml, write

GiB = 1024**3


def pool_yaml(name: str, host: str | None = None, **spec: object) -> str:
    import yaml

    meta = {"name": name, **({"host": host} if host else {})}
    body = {"type": "dir", "path": f"/srv/{name}", **spec}
    return yaml.safe_dump(
        {"apiVersion": "virt-reconcile/v1", "kind": "Pool", "metadata": meta, "spec": body}, sort_keys=False
    )


def pool(name: str = "images", **spec: object) -> Pool:
    return Pool.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Pool",
            "metadata": {"name": name},
            "spec": {"type": "dir", "path": f"/srv/{name}", **spec},
        }
    )


def seen(name: str = "images", **fields: object) -> PoolObservation:
    values: dict = {
        "type": "dir",
        "target": f"/srv/{name}",
        "active": True,
        "autostart": True,
        "capacity": 100 * GiB,
        "allocation": 10 * GiB,
        "available": 90 * GiB,
    }
    values.update(fields)
    return PoolObservation(name=name, **values)


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    return [str(p) for p in info.value.problems]


# ------------------------------------------------------------------------------------- loading


def test_pools_load_per_host_with_their_sources(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(tmp_path, "pools.yaml", pool_yaml("images", "hv1") + "---\n" + pool_yaml("images", "hv2"))
    write(tmp_path, "lvm.yaml", pool_yaml("vg0", "hv1", type="logical", path=None, devices=["/dev/sdb"]))
    manifests = load_manifests(tmp_path)
    assert list(manifests.pools["hv1"]) == ["vg0", "images"]  # file by file: lvm.yaml first
    assert list(manifests.pools["hv2"]) == ["images"]
    assert manifests.pool_source("hv2", "images").line == 10
    vg0 = manifests.pools["hv1"]["vg0"]
    assert (vg0.target, vg0.volume_group, vg0.spec.autostart) == ("/dev/vg0", "vg0", True)
    assert manifests.pools["hv1"]["images"].spec.overcommit.ratio == 1.0


def test_a_pool_may_leave_its_host_out_when_there_is_one(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(tmp_path, "p.yaml", pool_yaml("images"))
    assert list(load_manifests(tmp_path).pools["hv1"]) == ["images"]


def test_duplicate_pool_unknown_host_and_missing_host(tmp_path):
    write(tmp_path, "h.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(tmp_path, "a.yaml", pool_yaml("images", "hv1"))
    write(tmp_path, "b.yaml", pool_yaml("images", "hv1"))
    write(tmp_path, "c.yaml", pool_yaml("other", "hv9"))
    write(tmp_path, "d.yaml", pool_yaml("lost"))
    assert problems(tmp_path) == [
        "b.yaml:4: metadata.name: pool 'images' on host 'hv1' is already defined at a.yaml:1",
        "c.yaml:5: metadata.host: unknown host 'hv9' (hosts: hv1, hv2)",
        "d.yaml:3: metadata.host: required because several hosts exist (hv1, hv2)",
    ]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            "{type: dir}",
            "p.yaml:6: spec.path: a dir pool needs 'path': the folder holding its images",
        ),
        (
            "{type: logical, path: /dev/vg0/deeper}",
            "p.yaml:6: spec.path: a logical pool's path is /dev/VGNAME (its volume group), not "
            "'/dev/vg0/deeper'",
        ),
        (
            "{type: dir, path: /srv/x, devices: [/dev/sdb]}",
            "p.yaml:6: spec.devices: only a logical pool has devices (the physical volumes of its volume "
            "group)",
        ),
        ("{type: zfs, path: /tank}", "p.yaml:6: spec.type: Input should be 'dir' or 'logical'"),
        ("{type: dir, path: /srv/x, overcommit: {ratio: 0}}", "p.yaml:6: spec.overcommit.ratio: "),
        ("{type: dir, path: /srv/x, size: 1GiB}", "p.yaml:6: spec.size: unknown field"),
    ],
)
def test_bad_pool_specs_name_file_line_and_field(tmp_path, spec, problem):
    write(tmp_path, "h.yaml", host_yaml())
    write(
        tmp_path,
        "p.yaml",
        f"apiVersion: virt-reconcile/v1\nkind: Pool\nmetadata:\n  name: p\n\nspec: {spec}\n",
    )
    [found] = problems(tmp_path)
    assert found.startswith(problem)


def test_a_volume_must_name_a_pool_of_its_domains_host(tmp_path):
    write(tmp_path, "h.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(tmp_path, "p.yaml", pool_yaml("images", "hv2"))
    write(
        tmp_path,
        "d.yaml",
        """\
        apiVersion: virt-reconcile/v1
        kind: Domain
        metadata: {name: web, host: hv1}
        spec:
          memory: 1GiB
          disks:
            - volume: {pool: images, name: web.qcow2, size: 10GiB}
        """,
    )
    assert problems(tmp_path) == [
        "d.yaml:7: spec.disks[0].volume.pool: unknown pool 'images' on host 'hv1' (its pools: none): "
        "a volume needs a Pool document"
    ]


def test_the_pool_check_is_offered_for_other_callers(tmp_path):
    write(tmp_path, "h.yaml", host_yaml())
    write(tmp_path, "p.yaml", pool_yaml("images"))
    manifests = load_manifests(tmp_path)
    assert manifests.volume_pool_problem("hv1", "images") is None
    assert "unknown pool 'scratch' on host 'hv1' (its pools: images)" in str(
        manifests.volume_pool_problem("hv1", "scratch")
    )


def test_cached_pools_load_the_same(tmp_path):
    from reconciler.files.content_cache import ContentCache

    write(tmp_path, "h.yaml", host_yaml())
    write(tmp_path, "p.yaml", pool_yaml("images", overcommit={"ratio": 2.5}))
    cache = ContentCache(tmp_path / ".cache", "manifests")
    first = load_manifests(tmp_path, cache)
    again = load_manifests(tmp_path, cache)
    assert again.pools == first.pools
    assert again.pools["hv1"]["images"].spec.overcommit.ratio == 2.5


# ----------------------------------------------------------------------------------------- XML


def test_a_dir_pool_renders_its_folder_only():
    xml = render_pool(pool("images", path="/srv/images/"))
    assert xml == (
        '<pool type="dir">\n  <name>images</name>\n  <target>\n    <path>/srv/images</path>\n'
        "  </target>\n</pool>\n"
    )
    assert read_pool_xml(xml).target == "/srv/images"


def test_a_logical_pool_renders_its_volume_group_and_devices():
    spec = {"type": "logical", "path": None, "devices": ["/dev/sdb", "/dev/sdc"]}
    xml = render_pool(pool("vg0", **spec))
    assert '<device path="/dev/sdb"/>' in xml and '<device path="/dev/sdc"/>' in xml
    assert "<name>vg0</name>\n    <format type='lvm2'/>" in xml
    facts = read_pool_xml(xml)
    assert (facts.type, facts.target) == ("logical", "/dev/vg0")


def test_names_with_markup_are_escaped():
    xml = render_pool(pool("a.b", path="/srv/a&b"))
    assert "<path>/srv/a&amp;b</path>" in xml
    assert read_pool_xml(xml).target == "/srv/a&b"


def test_volume_xml_gives_sizes_format_and_backing():
    facts = read_volume_xml(
        "<volume type='file'><name>web.qcow2</name><capacity unit='bytes'>21474836480</capacity>"
        "<allocation unit='bytes'>200704</allocation><target><path>/srv/images/web.qcow2</path>"
        "<format type='qcow2'/></target><backingStore><path>/srv/base.qcow2</path></backingStore></volume>"
    )
    assert facts.name == "web.qcow2"
    assert (facts.capacity, facts.allocation) == (20 * GiB, 200704)
    assert (facts.format, facts.backing, facts.path) == ("qcow2", "/srv/base.qcow2", "/srv/images/web.qcow2")


# ---------------------------------------------------------------------------------------- plan


def test_a_missing_pool_is_defined_built_started_and_autostarted():
    planned = plan_pools("hv1", {"images": pool()}, [])
    [action] = planned.actions
    assert (action.kind, action.domain, action.phase) == (ActionKind.POOL, "images", Phase.POOL)
    assert action.xml == render_pool(pool()) and action.autostart is True
    assert [(c.field, c.before, c.after) for c in action.changes] == [
        ("type", None, "dir"),
        ("path", None, "/srv/images"),
        ("active", False, True),
        ("autostart", False, True),
    ]
    assert "build only when its folder is missing" in action.reason


def test_a_matching_pool_is_adopted_and_only_started_and_autostarted():
    planned = plan_pools("hv1", {"images": pool(autostart=False)}, [seen(active=False, autostart=True)])
    [action] = planned.actions
    assert action.xml is None and action.autostart is False
    assert [(c.field, c.before, c.after) for c in action.changes] == [
        ("active", False, True),
        ("autostart", True, False),
    ]
    assert plan_pools("hv1", {"images": pool()}, [seen()]) == plan_pools("hv1", {}, [])


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (seen(type="logical", target="/dev/images"), "exists as a logical pool at /dev/images"),
        (seen(target="/var/lib/libvirt/images"), "exists as a dir pool at /var/lib/libvirt/images"),
    ],
)
def test_a_pool_of_another_type_or_place_is_a_conflict_never_redefined(found, reason):
    planned = plan_pools("hv1", {"images": pool()}, [found])
    assert planned.actions == ()
    [error] = planned.errors
    assert reason in error and "the manifest wants a dir pool at /srv/images" in error


def test_pools_no_manifest_names_are_left_alone():
    assert plan_pools("hv1", {}, [seen("default", active=False, autostart=False)]).actions == ()


def desired(pools: dict[str, Pool]) -> DesiredHost:
    from reconciler.spec.models import Owner

    return DesiredHost(name="hv1", uri="sandbox:x", domains={}, owner_of=lambda _n: Owner(), pools=pools)


def observation(*pools: PoolObservation) -> HostObservation:
    return HostObservation(cpus=4, memory=16 * GiB, domains=(), pools=pools)


def test_a_host_plan_carries_pool_actions_and_a_conflict_blocks_the_host():
    plan = build_host_plan(desired({"images": pool()}), observation())
    assert [a.kind for a in plan.actions] == [ActionKind.POOL] and not plan.blocked
    clash = build_host_plan(desired({"images": pool()}), observation(seen(target="/elsewhere")))
    assert clash.blocked and clash.actions == () and "a conflict, never redefined" in clash.errors[0]


def rendered(plan: Plan) -> tuple[str, dict, str]:
    import io

    out = io.StringIO()
    render_text(plan, Printer(out, color=False))
    return out.getvalue(), plan_document(plan), render_markdown(plan)


def test_every_plan_format_shows_pool_actions():
    plan = Plan(hosts={"hv1": build_host_plan(desired({"images": pool()}), observation())})
    text, document, markdown = rendered(plan)
    assert "+ pool images  (define, build only when its folder is missing and never over data, start)" in text
    assert "path: null → /srv/images" in text and "autostart: false → true" in text
    assert (
        summary_line(plan) == "Plan: 0 to define, 0 to update, 0 to balloon, 0 to start, 0 to stop, "
        "0 to undefine, 1 pool(s) to ensure."
    )
    [action] = document["actions"]
    assert (action["action"], action["pool"], action["domain"]) == ("pool", "images", None)
    assert {"field": "path", "before": None, "after": "/srv/images"} in action["changes"]
    assert document["summary"]["pool"] == 1
    assert document["hosts"]["hv1"]["domains"] == {}  # a pool is not a domain in sync states
    assert "| `+` | pool | `images` | type: null → dir<br>path: null → /srv/images" in markdown
    json.dumps(document)


# ------------------------------------------------------------------------------------- sandbox


def test_the_sandbox_file_keeps_pools_their_volumes_and_flags():
    volume = (
        "<volume type='file'>\n  <name>a.qcow2</name>\n  <capacity unit='bytes'>1024</capacity>\n</volume>"
    )
    kept = [
        SandboxPool("images", f"<pool type='dir'>\n  <name>images</name>\n  {volume}\n</pool>\n", True, True),
        SandboxPool("spare", "<pool type='dir'>\n  <name>spare</name>\n</pool>\n", False, False),
    ]
    node = compose_node_xml(new_node_xml(4, 8 * GiB), [], pools=kept)
    assert node.count("<pool type='dir'>") == 2 and "<name>a.qcow2</name>" in node
    assert pool_marks(node) == ({"spare"}, {"images"})
    # saved again without pool facts (nothing about them known): kept as they were
    assert pool_marks(compose_node_xml(node, [])) == ({"spare"}, {"images"})
    # saved with new facts: replaced, marks included
    replaced = compose_node_xml(node, [], pools=[SandboxPool("spare", kept[1].xml, True, False)])
    assert replaced.count("<pool ") == 1 and pool_marks(replaced) == (set(), set())


def test_a_saved_pool_action_is_checked_against_the_host_again():
    from dataclasses import replace

    from reconciler.errors import SavedPlanError
    from reconciler.offline.recheck import recheck_actions

    [define] = plan_pools("hv1", {"images": pool()}, []).actions
    assert recheck_actions("hv1", observation(), [define]) == (define,)
    with pytest.raises(SavedPlanError, match="the pool exists already"):
        recheck_actions("hv1", observation(seen()), [define])
    elsewhere = replace(define, xml=render_pool(pool(path="/etc")))
    with pytest.raises(SavedPlanError, match="its XML is not the pool its changes show"):
        recheck_actions("hv1", observation(), [elsewhere])
    [start] = plan_pools("hv1", {"images": pool()}, [seen(active=False)]).actions
    assert recheck_actions("hv1", observation(seen(active=False)), [start]) == (start,)
    with pytest.raises(SavedPlanError, match="nothing to start"):
        recheck_actions("hv1", observation(), [start])
