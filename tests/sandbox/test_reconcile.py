"""The whole pipeline on the sandbox host (libvirt's test driver): plan, apply, converge."""

from __future__ import annotations

import json

from reconciler.libvirtxml.parse import parse_domain
from tests.helpers import cli, domain_yaml, host_yaml, write

GiB_KIB = 1024 * 1024


def plan_json(sandbox, *extra: str) -> tuple[int, dict]:
    result = cli("plan", str(sandbox.root), "--format", "json", *extra)
    return result.code, json.loads(result.out)


def test_define_then_converge(sandbox):
    sandbox.domains(
        web={"vcpus": 2, "currentMemory": "512MiB", "autostart": True},
        batch={"state": "stopped", "type": "qemu"},
    )
    assert cli("plan", str(sandbox.root)).code == 2
    assert not sandbox.state.exists(), "plan must not create the sandbox"
    applied = cli("apply", str(sandbox.root))
    assert applied.code == 0, applied.err
    assert "Apply complete: 3 action(s) done" in applied.out
    view = sandbox.view()
    assert view["web"].active and view["web"].autostart and view["web"].vcpus == 2
    assert view["web"].current_kib == 512 * 1024 and view["web"].memory_kib == GiB_KIB
    assert not view["batch"].active
    assert cli("plan", str(sandbox.root)).code == 0
    again = cli("apply", str(sandbox.root))
    assert again.code == 0 and "No changes" in again.out


def test_plan_json_document(sandbox):
    sandbox.domains(web={"vcpus": 2})
    code, doc = plan_json(sandbox)
    assert code == 2
    assert doc["formatVersion"] == 1 and doc["changes"] is True
    assert [(a["action"], a["host"], a["domain"], a["restart"]) for a in doc["actions"]] == [
        ("define", "hv1", "web", False),
        ("start", "hv1", "web", False),
    ]
    assert {"field": "vcpus", "before": None, "after": 2} in doc["actions"][0]["changes"]
    assert doc["summary"]["define"] == 1 and doc["hosts"]["hv1"]["blocked"] is False


def test_balloon_only_change_is_applied_live_without_redefine(sandbox):
    sandbox.domains(web={"memory": "2GiB"})
    cli("apply", str(sandbox.root))
    uuid_before = parse_domain(sandbox.view()["web"].xml).uuid
    sandbox.domains(web={"memory": "2GiB", "currentMemory": "1GiB"})
    code, doc = plan_json(sandbox)
    assert code == 2
    assert [a["action"] for a in doc["actions"]] == ["balloon"]
    assert doc["actions"][0]["changes"] == [{"field": "currentMemory", "before": "2GiB", "after": "1GiB"}]
    assert cli("apply", str(sandbox.root)).code == 0
    web = sandbox.view()["web"]
    assert web.current_kib == GiB_KIB and web.active
    assert parse_domain(web.xml).uuid == uuid_before
    assert cli("plan", str(sandbox.root)).code == 0


def test_update_of_running_domain_flags_restart_and_keeps_it_running(sandbox):
    sandbox.domains(web={"vcpus": 1})
    cli("apply", str(sandbox.root))
    sandbox.domains(web={"vcpus": 4})
    code, doc = plan_json(sandbox)
    assert code == 2
    assert [(a["action"], a["restart"]) for a in doc["actions"]] == [("update", True)]
    result = cli("apply", str(sandbox.root))
    assert "takes effect at the next restart" in result.out
    web = sandbox.view()["web"]
    assert web.vcpus == 4 and web.active
    assert cli("plan", str(sandbox.root)).code == 0


def test_stop_and_start(sandbox):
    sandbox.domains(web={})
    cli("apply", str(sandbox.root))
    sandbox.domains(web={"state": "stopped"})
    stopped = cli("apply", str(sandbox.root))
    assert "shut down gracefully" in stopped.out
    assert not sandbox.view()["web"].active
    sandbox.domains(web={})
    assert cli("apply", str(sandbox.root)).code == 0
    assert sandbox.view()["web"].active


def test_orphans_are_kept_without_allow_delete(sandbox):
    sandbox.domains(web={}, old={})
    cli("apply", str(sandbox.root))
    sandbox.domains(web={})
    result = cli("plan", str(sandbox.root))
    assert result.code == 0 and "orphan old" in result.out
    assert cli("apply", str(sandbox.root)).code == 0
    assert "old" in sandbox.view()
    code, doc = plan_json(sandbox, "--allow-delete")
    assert code == 2 and [(a["action"], a["domain"]) for a in doc["actions"]] == [("undefine", "old")]
    removed = cli("apply", str(sandbox.root), "--allow-delete")
    assert "shut down gracefully, then undefined" in removed.out
    assert set(sandbox.view()) == {"web"}


def test_prune_true_on_the_host_removes_orphans(sandbox):
    sandbox.domains(web={}, old={})
    cli("apply", str(sandbox.root))
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(web={})
    assert cli("apply", str(sandbox.root)).code == 0
    assert set(sandbox.view()) == {"web"}


UNMANAGED = """<domain type='kvm'><name>{name}</name><uuid>5b1c2c1e-7b53-4a43-9a0e-1c0ffee00001</uuid>
<memory unit='KiB'>1048576</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os></domain>"""


def test_unmanaged_domains_are_never_changed_or_undefined(sandbox):
    sandbox.seed(UNMANAGED.format(name="theirs"))
    sandbox.domains(web={})
    before = sandbox.view()["theirs"]
    assert cli("apply", str(sandbox.root), "--allow-delete").code == 0
    assert sandbox.view()["theirs"] == before


def test_conflict_exits_1_and_changes_nothing_on_that_host(sandbox):
    sandbox.seed(UNMANAGED.format(name="web"))
    sandbox.domains(web={"vcpus": 4}, other={})
    before = sandbox.state.read_bytes()
    planned = cli("plan", str(sandbox.root))
    assert planned.code == 1 and "conflict web" in planned.out
    applied = cli("apply", str(sandbox.root))
    assert applied.code == 1 and "nothing will be applied on hv1" in applied.out
    assert sandbox.state.read_bytes() == before


def test_conflict_on_one_host_spares_the_other(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    sandbox.seed(UNMANAGED.format(name="web"))
    write(
        sandbox.root,
        "domains.yaml",
        domain_yaml("web", host="hv1") + "---\n" + domain_yaml("web", host="hv2"),
    )
    assert cli("apply", str(sandbox.root)).code == 1
    assert (sandbox.root / "state" / "hv2.xml").exists()
    assert "<name>web</name>" in (sandbox.root / "state" / "hv2.xml").read_text()


def test_bad_input_applies_nothing(sandbox):
    sandbox.domains(web={})
    cli("apply", str(sandbox.root))
    before = sandbox.state.read_bytes()
    write(
        sandbox.root,
        "broken.yaml",
        domain_yaml("new", vcpus=2) + "---\n" + "apiVersion: virt-reconcile/v1\n"
        "kind: Domain\nmetadata: {name: bad}\nspec: {memory: 4096}\n",
    )
    result = cli("apply", str(sandbox.root))
    assert result.code == 1
    assert "broken.yaml:12: spec.memory: bare number 4096" in result.err
    assert "nothing was applied" in result.err
    assert sandbox.state.read_bytes() == before


def test_host_filter(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(sandbox.root, "domains.yaml", domain_yaml("a", host="hv1") + "---\n" + domain_yaml("b", host="hv2"))
    assert cli("apply", str(sandbox.root), "--host", "hv2").code == 0
    assert not sandbox.state.exists() and (sandbox.root / "state" / "hv2.xml").exists()
    unknown = cli("plan", str(sandbox.root), "--host", "hv9")
    assert unknown.code == 1 and "unknown host 'hv9'" in unknown.err


def test_validate(sandbox):
    sandbox.domains(web={})
    assert cli("validate", str(sandbox.root)).code == 0
    write(
        sandbox.root,
        "bad.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: x}\n"
        "spec: {memory: 1GiB, currentMemory: 2GiB}\n",
    )
    result = cli("validate", str(sandbox.root))
    assert result.code == 1 and "bad.yaml:4: spec.currentMemory" in result.err


def test_seeded_sandbox_capacity_and_domains_survive_apply(sandbox):
    sandbox.seed(UNMANAGED.format(name="theirs"), running=False)
    sandbox.domains(web={})
    cli("apply", str(sandbox.root))
    text = sandbox.state.read_text()
    assert "<cores>16</cores>" in text
    view = sandbox.view()
    assert not view["theirs"].active and view["web"].active


def test_many_starts_balloons_and_stops_run_concurrently_and_all_report(sandbox):
    sandbox.domains(**{f"vm{i}": {"state": "stopped"} for i in range(12)})
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains(**{f"vm{i}": {} for i in range(12)})
    started = cli("apply", str(sandbox.root), "--parallel", "4")
    assert started.code == 0 and started.out.count(": started") == 12
    assert all(view.active for view in sandbox.view().values())
    sandbox.domains(**{f"vm{i}": {"currentMemory": "512MiB"} for i in range(12)})
    ballooned = cli("apply", str(sandbox.root), "--parallel", "4")
    assert ballooned.code == 0 and ballooned.out.count("live and persistent target set") == 12
    assert {view.current_kib for view in sandbox.view().values()} == {512 * 1024}
    sandbox.domains(**{f"vm{i}": {"state": "stopped"} for i in range(12)})
    stopped = cli("apply", str(sandbox.root), "--parallel", "1")
    assert stopped.code == 0 and stopped.out.count("shut down gracefully") == 12
    assert cli("plan", str(sandbox.root)).code == 0


def test_cached_parses_still_see_a_change_made_behind_our_back(sandbox, private_cache_folder):
    from reconciler.libvirtxml.parse import forget_parsed

    sandbox.domains(web={"vcpus": 2})
    assert cli("apply", str(sandbox.root)).code == 0
    forget_parsed()  # each run below starts as a new process: only the cache files carry over
    assert cli("plan", str(sandbox.root)).code == 0
    assert list((private_cache_folder / "manifests").glob("*.json"))
    assert list((private_cache_folder / "domains").glob("*.json"))
    state = sandbox.state.read_text()
    assert state.count("<vcpu placement='static'>2</vcpu>") == 1
    sandbox.state.write_text(
        state.replace("<vcpu placement='static'>2</vcpu>", "<vcpu placement='static'>3</vcpu>")
    )
    forget_parsed()
    code, doc = plan_json(sandbox)
    assert code == 2
    assert doc["actions"][0]["changes"] == [{"field": "vcpus", "before": 3, "after": 2}]
