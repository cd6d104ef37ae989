"""Run strategies, suspend annotations and sync windows through the real engine and libvirt adapter on
libvirt's test driver: a private in-process host whose domains are shut down and destroyed for real
(the test driver gives the reasons libvirt does), and the sandbox host through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt.host import LibvirtHypervisor
from reconciler.adapters.sandbox import new_node_xml
from reconciler.engine.reconcile import Outcome, ReconcileOptions, reconcile
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import Host
from tests.helpers import cli, domain_yaml, write

GiB = 1024**3
HOST = (
    "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\n"
    "spec:\n  uri: test:///default\n  capacity: {cpus: 8, memory: 16GiB}\n"
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A test-driver host of its own (a node file, so no other test sees its domains)."""
    node = tmp_path / "node.xml"
    node.write_text(new_node_xml(8, 16 * GiB))
    conn = libvirt.open(f"test://{node}")
    try:
        yield conn
    finally:
        conn.close()


def apply(root: Path, conn: libvirt.virConnect, **options: object) -> Outcome:
    """One apply pass of the manifests under ``root`` against the private host."""

    @contextmanager
    def connect(spec: Host, write: bool) -> Iterator[LibvirtHypervisor]:
        yield LibvirtHypervisor(spec.name, conn, in_process=True)

    return reconcile(load_manifests(root), connect, ReconcileOptions(apply=True, **options))  # type: ignore[arg-type]


def started(outcome: Outcome) -> list[str]:
    return [r.action.domain for rs in outcome.results.values() for r in rs if r.action.kind.value == "start"]


def manifests(root: Path, **domains: dict) -> None:
    write(root, "hosts.yaml", HOST)
    write(root, "domains.yaml", "---\n".join(domain_yaml(name, **spec) for name, spec in domains.items()))


# ---------------------------------------------------------------------------------- strategies


def test_each_strategy_against_a_shutdown_and_a_destroy(tmp_path: Path, host: libvirt.virConnect):
    strategies = ("always", "rerunOnFailure", "manual")
    manifests(tmp_path, **{s.lower(): {"runStrategy": s} for s in strategies})
    assert sorted(started(apply(tmp_path, host))) == ["always", "manual", "rerunonfailure"]  # first define

    for stop, reason in (
        (libvirt.virDomain.shutdown, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
        (libvirt.virDomain.destroy, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED),
    ):
        for name in ("always", "rerunonfailure", "manual"):
            dom = host.lookupByName(name)
            if not dom.isActive():
                dom.create()  # left off by the last round: started by hand, to be stopped again
            stop(dom)
            assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, reason]
        outcome = apply(tmp_path, host)
        assert started(outcome) == ["always"], "only always starts a domain someone stopped"
        start = outcome.plan.hosts["hv1"].actions[0]
        assert start.reason.endswith("runStrategy always starts it") and "shut off (" in start.reason
        assert not host.lookupByName("rerunonfailure").isActive()
        assert not host.lookupByName("manual").isActive()


def test_halted_stops_what_was_started_by_hand_and_manual_does_not(tmp_path: Path, host: libvirt.virConnect):
    manifests(
        tmp_path, halted={"runStrategy": "halted"}, manual={"runStrategy": "manual", "state": "stopped"}
    )
    assert started(apply(tmp_path, host)) == []
    for name in ("halted", "manual"):
        host.lookupByName(name).create()  # started by hand
    outcome = apply(tmp_path, host)
    assert [(a.kind.value, a.domain) for a in outcome.plan.hosts["hv1"].actions] == [("stop", "halted")]
    assert not host.lookupByName("halted").isActive()
    assert host.lookupByName("manual").isActive()


def test_a_never_started_domain_is_started_by_rerun_on_failure(tmp_path: Path, host: libvirt.virConnect):
    manifests(tmp_path, web={"runStrategy": "manual", "state": "stopped"})
    apply(tmp_path, host)
    assert host.lookupByName("web").state() == [
        libvirt.VIR_DOMAIN_SHUTOFF,
        libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN,
    ]
    manifests(tmp_path, web={"runStrategy": "rerunOnFailure"})  # nothing says it stopped on purpose
    assert started(apply(tmp_path, host)) == ["web"]


def forgotten(host: libvirt.virConnect, name: str) -> libvirt.virDomain:
    """``name`` as libvirt holds it after a libvirtd restart or a host reboot: the same persistent
    definition, shut off for a reason it no longer knows (undefined and defined again, which a
    shared libvirtd need not be restarted for)."""
    dom = host.lookupByName(name)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    dom.undefine()
    dom = host.defineXML(xml)
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN]
    return dom


def test_rerun_on_failure_keeps_off_what_it_saw_stopped_on_purpose_once_libvirt_forgot_why(
    tmp_path: Path, host: libvirt.virConnect
):
    manifests(tmp_path, web={"runStrategy": "rerunOnFailure"}, db={"runStrategy": "rerunOnFailure"})
    apply(tmp_path, host)
    for name in ("web", "db"):
        host.lookupByName(name).destroy()  # an operator pulls the plug on both
    before = host.lookupByName("db").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    seen = apply(tmp_path, host)  # a pass sees the destroys: recorded, nothing changed or started
    assert started(seen) == [] and not seen.plan.has_changes and not seen.failed
    after = host.lookupByName("db").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert after == before.replace('host="hv1"/>', 'host="hv1" offOnPurpose="destroyed"/>')  # that alone

    forgotten(host, "web")
    forgotten(host, "db")
    manifests(
        tmp_path, web={"runStrategy": "rerunOnFailure"}, db={"runStrategy": "rerunOnFailure", "vcpus": 2}
    )
    outcome = apply(tmp_path, host)
    assert started(outcome) == [], "both were stopped on purpose: libvirt forgetting it changes nothing"
    assert [r.action.kind.value for r in outcome.results["hv1"]] == ["update"]  # db's redefine keeps it
    assert 'offOnPurpose="destroyed"' in host.lookupByName("db").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    web = host.lookupByName("web")
    web.create()  # started by hand: the record goes
    assert started(apply(tmp_path, host)) == []
    assert "offOnPurpose" not in web.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    web.destroy()
    forgotten(host, "web")  # forgotten before any pass saw why: nothing says it was meant
    assert started(apply(tmp_path, host)) == ["web"]


def test_a_refused_host_gets_no_off_on_purpose_record_either(tmp_path: Path, host: libvirt.virConnect):
    """A refused plan changes nothing on its host: not even the metadata-only record."""
    manifests(tmp_path, web={"runStrategy": "rerunOnFailure"})
    apply(tmp_path, host)
    host.lookupByName("web").destroy()
    before = host.lookupByName("web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    manifests(tmp_path, web={"runStrategy": "rerunOnFailure"}, wide={"vcpus": 64})  # past 8 CPUs x 4
    refused = apply(tmp_path, host)
    assert refused.plan.hosts["hv1"].refused and not refused.results.get("hv1")
    assert host.lookupByName("web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    manifests(tmp_path, web={"runStrategy": "rerunOnFailure"})
    apply(tmp_path, host)  # the next apply the host allows records it
    assert 'offOnPurpose="destroyed"' in host.lookupByName("web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


# ---------------------------------------------------------------------------------- suspended


def test_a_suspended_domain_and_host_are_left_alone_until_resumed(sandbox):
    sandbox.domains(web={}, db={})
    assert cli("apply", str(sandbox.root), "--auto-approve").code == 0
    suspended = domain_yaml("web", vcpus=2).replace(
        "metadata:\n  name: web\n",
        "metadata:\n  name: web\n  annotations: {virt-reconcile.dev/suspend: 'true'}\n",
    )
    write(sandbox.root, "domains.yaml", suspended + "---\n" + domain_yaml("db", vcpus=2))
    run = cli("apply", str(sandbox.root), "--auto-approve")
    assert run.code == 0, run.out + run.err
    assert "⏸ suspended web: left alone" in run.out
    assert {name: view.vcpus for name, view in sandbox.view().items()} == {"web": 1, "db": 2}
    document = json.loads(cli("plan", str(sandbox.root), "--format", "json").out)
    assert document["hosts"]["hv1"]["suspendedDomains"] == ["web"]
    assert document["actions"] == []

    hosts = (sandbox.root / "hosts.yaml").read_text()
    write(
        sandbox.root,
        "hosts.yaml",
        hosts.replace(
            "metadata: {name: hv1}",
            "metadata: {name: hv1, annotations: {virt-reconcile.dev/suspend: 'true'}}",
        ),
    )
    sandbox.domains(web={"vcpus": 3}, db={"vcpus": 3})
    run = cli("apply", str(sandbox.root), "--auto-approve")
    assert run.code == 0 and "the host is suspended" in run.out
    assert {name: view.vcpus for name, view in sandbox.view().items()} == {"web": 1, "db": 2}

    write(sandbox.root, "hosts.yaml", hosts)  # resumed: what waited is applied
    assert cli("apply", str(sandbox.root), "--auto-approve").code == 0
    assert {name: view.vcpus for name, view in sandbox.view().items()} == {"web": 3, "db": 3}


# -------------------------------------------------------------------------------- sync windows


def with_windows(sandbox, windows: str) -> None:
    text = (sandbox.root / "hosts.yaml").read_text().split("  syncWindows:")[0]
    write(sandbox.root, "hosts.yaml", text + "  syncWindows:\n" + windows)


def test_inside_a_deny_window_apply_shows_the_plan_applies_nothing_and_exits_0(sandbox):
    with_windows(sandbox, "  - {kind: deny, schedule: '* * * * *', duration: 1m}\n")  # always on
    sandbox.domains(web={})
    run = cli("apply", str(sandbox.root), "--auto-approve")
    assert run.code == 0, run.out + run.err
    assert "+ define web" in run.out
    assert "⏸ deferred: inside sync window deny * * * * * for 1m; closes " in run.out
    assert "deferred by their sync windows on hv1" in run.out
    assert not sandbox.state.exists() or sandbox.view() == {}
    plan = json.loads(cli("plan", str(sandbox.root), "--format", "json").out)
    assert plan["hosts"]["hv1"]["deferred"].startswith("inside sync window deny")
    assert plan["summary"]["deferredHosts"] == 1

    run = cli("apply", str(sandbox.root), "--auto-approve", "--ignore-sync-windows")
    assert run.code == 0 and "deferred" not in run.out
    assert sandbox.view()["web"].active


def test_deferred_changes_are_applied_by_the_first_pass_inside_the_window(sandbox):
    with_windows(sandbox, "  - {kind: allow, schedule: '0 2 * * *', duration: 1h, timeZone: Europe/Paris}\n")
    sandbox.domains(web={})
    loaded = load_manifests(sandbox.root)

    def apply_at(moment: str) -> Outcome:
        from reconciler.cli.inputs import connector

        when = datetime.fromisoformat(moment).replace(tzinfo=UTC)
        return reconcile(loaded, connector(), ReconcileOptions(apply=True, now=when))

    noon = apply_at("2026-05-01T12:00")
    assert noon.plan.hosts["hv1"].deferred == (
        "outside sync window allow 0 2 * * * for 1h (Europe/Paris); next opens 2026-05-02T00:00Z"
    )
    assert noon.results == {"hv1": []} and not noon.failed
    assert [a.kind.value for a in noon.plan.hosts["hv1"].actions] == ["define", "start"]
    inside = apply_at("2026-05-02T00:30")  # 02:30 in Paris
    assert inside.plan.hosts["hv1"].deferred == ""
    assert [r.action.kind.value for r in inside.results["hv1"] if r.ok] == ["define", "start"]
    assert sandbox.view()["web"].active
