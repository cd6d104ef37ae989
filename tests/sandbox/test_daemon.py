"""The GitOps daemon as a real process: a local bare git repository, sandbox hosts, HTTP."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

from tests.daemon_helpers import DaemonProcess
from tests.helpers import cli, domain_yaml

SECRET = b"s3cret"


def host(cpus: int = 8) -> str:
    """The sandbox host, its state file inside the manifest root (a manifest names no file outside)."""
    return (
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\n"
        f"spec:\n  uri: sandbox:state/hv1.xml\n  capacity: {{cpus: {cpus}, memory: 16GiB}}\n"
        "  overcommit: {cpu: {ratio: 1.0}}\n"
    )


def checkout_state(tmp_path: Path) -> Path:
    """Where the daemon's sandbox host keeps its state: beside the manifests it checked out."""
    return tmp_path / "state" / "checkout" / "manifests" / "state" / "hv1.xml"


def sandbox_view(state: Path) -> str:
    return state.read_text() if state.exists() else ""


def test_first_commit_then_push_and_webhook(tmp_path, repo, daemons):
    state = checkout_state(tmp_path)
    first = repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web", vcpus=2)})
    daemon = daemons(repo, "--snapshot-to", str(tmp_path / "published"))
    status = daemon.wait_for("hv1", result="applied", revision=first)
    assert status["appliedRevision"] == first and "define web" in status["message"]
    assert "<name>web</name>" in state.read_text()

    second = repo.commit({"db.yaml": domain_yaml("db", vcpus=1)})
    started = time.monotonic()
    assert daemon.webhook() == 202
    daemon.wait_for("hv1", result="applied", revision=second)
    assert time.monotonic() - started < 10
    assert "<name>db</name>" in state.read_text()

    assert daemon.webhook(signature="sha256=" + "0" * 64) == 401
    assert daemon.get("/healthz")[0] == 200
    metrics = daemon.get("/metrics")[1].decode()
    for name in (
        "virt_reconcile_reconcile_duration_seconds",
        "virt_reconcile_reconcile_results_total",
        "virt_reconcile_last_success_timestamp_seconds",
        'virt_reconcile_policy_usage{host="hv1",rule="cpu.total"} 3.0',
        'virt_reconcile_policy_limit{host="hv1",rule="cpu.total"} 8.0',
    ):
        assert name in metrics
    out = cli("status", "--url", daemon.url)
    assert out.code == 0 and "hv1  applied  revision " + second[:12] in out.out
    snapshot = json.loads((tmp_path / "state" / "snapshots" / "hv1.json").read_text())
    assert {d["name"] for d in snapshot["hosts"]["hv1"]["domains"]} == {"web", "db"}  # after the apply
    assert (tmp_path / "published" / "hv1.json").exists()
    daemon.wait_for_line(f"hv1: applied at {second[:12]} (new revision): 2 action(s): define db, start db")


def test_policy_breaking_commit_is_refused_and_the_previous_state_stays(tmp_path, repo, daemons):
    state = checkout_state(tmp_path)
    good = repo.commit({"hosts.yaml": host(cpus=4), "web.yaml": domain_yaml("web", vcpus=2)})
    daemon = daemons(repo)
    daemon.wait_for("hv1", result="applied", revision=good)
    before = sandbox_view(state)
    bad = repo.commit({"big.yaml": domain_yaml("big", vcpus=4)})
    assert daemon.webhook() == 202
    status = daemon.wait_for("hv1", result="refused", revision=bad)
    assert status["appliedRevision"] == good
    assert "cpu.total: 2 → 6 vCPUs > floor(4 CPUs × 1) = 4" in status["message"]
    assert sandbox_view(state) == before
    assert "virt_reconcile_refusals_total" in daemon.get("/metrics")[1].decode()
    fixed = repo.commit({"big.yaml": domain_yaml("big", vcpus=2)})
    assert daemon.webhook() == 202
    daemon.wait_for("hv1", result="applied", revision=fixed)


def test_fetch_failure_keeps_the_state_and_is_reported_then_recovers(tmp_path, repo, daemons):
    state = checkout_state(tmp_path)
    good = repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web")})
    daemon = daemons(repo)
    daemon.wait_for("hv1", result="applied", revision=good)
    before = sandbox_view(state)
    moved = tmp_path / "origin-away.git"
    shutil.move(repo.origin, moved)
    assert daemon.webhook() == 202
    status = daemon.wait_for("hv1", result="error")
    assert "fetch failed" in status["message"] and status["appliedRevision"] == good
    assert "fetch failed" in daemon.status()["source"]["message"]
    assert sandbox_view(state) == before
    assert "; retrying in " in daemon.wait_for_line("fetch failed (attempt 1): git ")
    shutil.move(moved, repo.origin)
    newer = repo.commit({"db.yaml": domain_yaml("db")})
    daemon.wait_for("hv1", result="applied", revision=newer, timeout=30)  # the backoff retry finds it


def test_sigterm_exits_0_within_seconds(tmp_path, repo, daemons):
    repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web")})
    daemon = daemons(repo)
    daemon.wait_for("hv1", result="applied")
    started = time.monotonic()
    assert daemon.terminate(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5


def test_kill_9_then_restart_converges(tmp_path, repo, daemons):
    repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web")})
    daemon = daemons(repo)
    daemon.wait_for("hv1", result="applied")
    latest = repo.commit({f"vm{i}.yaml": domain_yaml(f"vm{i}") for i in range(5)})
    daemon.webhook()
    daemon.terminate(signal.SIGKILL)  # perhaps mid-apply
    again = daemons(repo)
    again.wait_for("hv1", revision=latest, appliedRevision=latest)
    checkout = tmp_path / "state" / "checkout" / "manifests"
    assert cli("plan", str(checkout)).code == 0


def test_webhook_is_off_without_a_secret(tmp_path, repo, daemons):
    repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web")})
    daemon = daemons(repo, secret=None)
    daemon.wait_for("hv1", result="applied")
    assert daemon.webhook(signature="sha256=whatever") == 404


def test_polling_finds_a_new_commit(tmp_path, repo, daemons):
    repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web")})
    daemon = daemons(repo, "--interval", "1s")
    daemon.wait_for("hv1", result="applied")
    newer = repo.commit({"db.yaml": domain_yaml("db")})
    daemon.wait_for("hv1", result="applied", revision=newer, timeout=20)


def test_directory_source_is_watched(tmp_path, daemons):
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "hosts.yaml").write_text(host())
    (folder / "web.yaml").write_text(domain_yaml("web"))
    process = DaemonProcess("--source", str(folder), "--interval", "1h", state_dir=tmp_path / "state")
    try:
        process.start()
        first = process.wait_for("hv1", result="applied")
        (folder / "db.yaml").write_text(domain_yaml("db"))
        status = process.wait_for(
            "hv1", result="applied", timeout=20, message="2 action(s): define db, start db"
        )
        assert status["revision"] != first["revision"]
    finally:
        process.stop()
