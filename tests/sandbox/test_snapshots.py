"""Snapshots and saved plans: offline plans equal live ones; stale saved plans change nothing."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.daemon.snapshots import SnapshotPublisher
from reconciler.engine.preflight import wanted_paths
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.errors import SnapshotError
from reconciler.files.keys import signing_key
from reconciler.offline.savedplan import signature
from reconciler.offline.snapshot import Snapshot, SnapshotHypervisor, load_snapshots, snapshot_host
from reconciler.report import plan_document
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, domain_yaml, host_yaml, write
from tests.sandbox.test_properties import desired_sets


def live_connect(host, write_):
    return libvirt_host.connect(host, write=write_)


def test_snapshot_then_offline_plan_matches_the_live_plan(sandbox, tmp_path):
    sandbox.domains(web={"vcpus": 2}, db={"state": "stopped"}, old={})
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains(web={"vcpus": 3}, db={}, new={"currentMemory": "512MiB"})
    snap = tmp_path / "snap.json"
    taken = cli("snapshot", str(sandbox.root), "--out", str(snap))
    assert taken.code == 0 and "1 host(s), 3 domain(s)" in taken.err
    document = json.loads(snap.read_text())
    assert document["formatVersion"] == 1
    web = next(d for d in document["hosts"]["hv1"]["domains"] if d["name"] == "web")
    assert web["managed"] and web["spec"]["vcpus"] == 2 and web["owner"]["manifest"] == "domains.yaml"
    for fmt in ("json", "markdown", "text"):
        live = cli("plan", str(sandbox.root), "--format", fmt)
        offline = cli("plan", str(sandbox.root), "--format", fmt, "--state", str(snap))
        assert (live.code, live.out) == (offline.code, offline.out) and live.code == 2
    assert cli("plan", str(sandbox.root), "--state", str(tmp_path / "missing.json")).code == 1


def test_a_host_missing_from_the_snapshot_is_an_error(sandbox, tmp_path):
    sandbox.domains(web={})
    snap = tmp_path / "snap.json"
    snap.write_text(Snapshot(taken_at="now", hosts={}).model_dump_json(by_alias=True))
    result = cli("plan", str(sandbox.root), "--state", str(snap))
    assert result.code == 1 and "not in the snapshot" in result.out


def test_the_daemon_publishes_a_copy_others_can_read(sandbox, tmp_path):
    sandbox.domains(web={})
    folder, published = tmp_path / "state", tmp_path / "published"
    publisher = SnapshotPublisher(folder, live_connect, copy_to=published)
    host = load_manifests(sandbox.root).hosts["hv1"]
    publisher.publish(host, None, "2025-01-01T00:00:00+00:00")
    copy = published / "hv1.json"
    assert Snapshot.model_validate_json(copy.read_text()).hosts["hv1"].cpus > 0
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644, "as snapshot --out writes it"
    assert copy.read_bytes() == (folder / "hv1.json").read_bytes()


def test_no_readable_snapshot_is_a_snapshot_error(sandbox, tmp_path):
    sandbox.domains(web={})
    folder = tmp_path / "snapshots"
    folder.mkdir()
    with pytest.raises(SnapshotError, match="no snapshot files"):
        load_snapshots(folder)
    (folder / "hv1.json").write_text('{"kind": "something else"}')
    with pytest.raises(SnapshotError, match=r"hv1\.json: not a virt-reconcile snapshot"):
        load_snapshots(folder)
    result = cli("plan", str(sandbox.root), "--state", str(folder))
    assert result.code == 1 and "not a virt-reconcile snapshot" in result.err


@given(first=desired_sets, second=desired_sets)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_offline_plan_equals_live_plan_for_any_state(first, second):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write(root, "hosts.yaml", host_yaml(cpus=64, memory="64GiB"))
        write(root, "domains.yaml", "---\n".join(domain_yaml(n, **s) for n, s in first.items()) or "# none\n")
        reconcile(load_manifests(root), live_connect, ReconcileOptions(apply=True))
        write(
            root, "domains.yaml", "---\n".join(domain_yaml(n, **s) for n, s in second.items()) or "# none\n"
        )
        manifests = load_manifests(root)
        live = reconcile(manifests, live_connect, ReconcileOptions(apply=False, allow_delete=True))
        host = manifests.hosts["hv1"]
        with libvirt_host.connect(host, write=False) as hypervisor:
            environment = hypervisor.environment(wanted_paths(manifests.domains["hv1"].values()))
            taken = snapshot_host(host.spec.uri, hypervisor.observe(), environment)
            recorded = Snapshot.model_validate_json(
                Snapshot(taken_at="t", hosts={"hv1": taken}).model_dump_json(by_alias=True)
            )

        def offline_connect(host_, _write):
            from contextlib import nullcontext

            return nullcontext(SnapshotHypervisor(host_.name, recorded.hosts["hv1"]))

        offline = reconcile(manifests, offline_connect, ReconcileOptions(apply=False, allow_delete=True))
        assert plan_document(offline.plan) == plan_document(live.plan)


def test_a_fresh_saved_plan_applies_exactly_and_converges(sandbox, tmp_path):
    sandbox.domains(web={"vcpus": 2}, db={"state": "stopped"})
    saved = tmp_path / "plan.json"
    planned = cli("plan", str(sandbox.root), "--out", str(saved))
    assert planned.code == 2 and saved.exists()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644, "signed and secret-free: others may read it"
    sandbox.domains(web={"vcpus": 2}, db={"state": "stopped"}, later={})  # not in the saved plan
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert set(sandbox.view()) == {"web", "db"}, "only the saved actions were applied"
    sandbox.domains(web={"vcpus": 2}, db={"state": "stopped"})
    assert cli("plan", str(sandbox.root)).code == 0


def test_a_stale_saved_plan_is_refused_and_changes_nothing(sandbox, tmp_path):
    sandbox.domains(web={"vcpus": 2})
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains(web={"vcpus": 3}, db={})
    saved = tmp_path / "plan.json"
    assert cli("plan", str(sandbox.root), "--out", str(saved)).code == 2
    sandbox.domains(web={"vcpus": 2, "state": "stopped"})
    assert cli("apply", str(sandbox.root)).code == 0  # the host moves after the plan was saved
    before = sandbox.state.read_bytes()
    stale = cli("apply", "--plan", str(saved))
    assert stale.code == 1 and "stale" in stale.err
    assert sandbox.state.read_bytes() == before


def test_saved_plan_rechecks_the_policy(sandbox, tmp_path):
    write(sandbox.root, "hosts.yaml", host_yaml(cpus=2, memory="8GiB"))
    sandbox.domains(web={"vcpus": 2})
    saved = tmp_path / "plan.json"
    assert cli("plan", str(sandbox.root), "--out", str(saved)).code == 2
    document = json.loads(saved.read_text())
    document["hosts"]["hv1"]["overcommit"]["cpu"]["ratio"] = 0.5  # as if the policy were tighter now
    document["signature"] = signature(document, signing_key())  # signed as such: the policy still holds it
    saved.write_text(json.dumps(document))
    refused = cli("apply", "--plan", str(saved))
    assert refused.code == 3 and not sandbox.state.exists()


def test_not_a_saved_plan(tmp_path):
    bogus = tmp_path / "x.json"
    bogus.write_text('{"kind": "something else"}')
    result = cli("apply", "--plan", str(bogus))
    assert result.code == 1 and "not a saved virt-reconcile plan" in result.err
