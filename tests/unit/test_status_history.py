"""``/status`` beyond each host's last result: each domain's sync state, the policy's usage, the
passes running now and the history of the last passes, kept across restarts; the metrics and log
lines that go with them. In-process daemons over in-memory hosts."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from reconciler.daemon import Trigger
from reconciler.daemon.status import HISTORY, HostStatus, PassRecord, StatusStore
from reconciler.errors import RevisionRefusedError, TemporaryHostError
from tests.daemon_helpers import FakeHypervisor, in_process_daemon, settle
from tests.helpers import domain_yaml, host_yaml

START = [(Trigger.START, None)]
pytestmark = pytest.mark.usefixtures("no_timers_left")  # tests/unit/conftest.py


def commit(source, revision: str, *documents: str) -> None:
    """The manifest folder now holds ``documents`` at ``revision``."""
    (source.manifests / "all.yaml").write_text("---\n".join(documents))
    source.revision = revision


def sample(daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


def history(daemon) -> list[tuple]:
    return [
        (e["hosts"], e["revision"], e["trigger"], e["result"]) for e in daemon.status.document()["history"]
    ]


# ------------------------------------------------------------------------------------- the history


def test_the_push_that_applied_stays_in_the_history_after_the_echo_that_found_nothing(tmp_path):
    daemon, _source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    settle(daemon, [(Trigger.DRIFT, "hv1")])  # the events of our own define and start
    document = daemon.status.document()
    assert document["hosts"]["hv1"]["result"] == "unchanged"
    assert history(daemon) == [
        (["hv1"], "r1", "drift", "unchanged"),
        (["hv1"], "r1", "new revision", "applied"),
    ]
    applied = document["history"][1]
    assert applied["actions"] == ["define web-hv1", "start web-hv1"]
    assert applied["message"] == "2 action(s): define web-hv1, start web-hv1"
    assert applied["duration"] >= 0 and applied["time"]


def test_routine_passes_that_find_nothing_do_not_push_out_what_a_push_did(tmp_path):
    daemon, _source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    for _ in range(3):
        settle(daemon, [(Trigger.RESYNC, None)])
    assert history(daemon) == [
        (["hv1"], "r1", "resync", "unchanged"),
        (["hv1"], "r1", "new revision", "applied"),
    ]


def test_retries_meeting_the_same_error_are_one_entry_and_do_not_push_out_the_push(tmp_path):
    daemon, _source, hosts = in_process_daemon(tmp_path, hosts=("hv1", "hv2"))
    settle(daemon, START)
    hosts.fail("hv1", TemporaryHostError("hv1", "connection refused"), times=HISTORY + 5)
    for _ in range(HISTORY + 5):  # a retry a minute for an hour
        settle(daemon, [(Trigger.RETRY, "hv1")])
    settle(daemon, [(Trigger.DRIFT, "hv2")])  # another host's pass between two of hv1's
    settle(daemon, [(Trigger.RETRY, "hv1")])  # hv1 is back
    entries = [
        (e["hosts"], e["trigger"], e["result"], e["count"]) for e in daemon.status.document()["history"]
    ]
    assert entries[:3] == [
        (["hv1"], "retry", "unchanged", 1),
        (["hv2"], "drift", "unchanged", 1),
        (["hv1"], "retry", "error", HISTORY + 5),
    ]
    assert sorted(entries[3:]) == [
        (["hv1"], "new revision", "applied", 1),
        (["hv2"], "new revision", "applied", 1),
    ]
    errors = daemon.status.document()["history"][2]
    assert errors["first"] and errors["first"] <= errors["time"]  # ISO times, to the second
    assert "connection refused" in errors["message"]


def test_the_history_keeps_the_last_passes_newest_first(tmp_path):
    store = StatusStore(tmp_path / "status.json")
    for index in range(HISTORY + 10):
        store.record(
            PassRecord(f"t{index}", ["hv1"], f"r{index}", "webhook", "applied", [f"update d{index}"])
        )
    entries = store.document()["history"]
    assert len(entries) == HISTORY
    assert [e["revision"] for e in entries[:2]] == [f"r{HISTORY + 9}", f"r{HISTORY + 8}"]
    assert entries[-1]["revision"] == "r10"


def test_the_history_and_the_domains_survive_a_restart(tmp_path):
    daemon, _source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    again, _source, _hosts = in_process_daemon(tmp_path)
    before, after = daemon.status.document(), again.status.document()
    assert after["history"] == before["history"] and len(after["history"]) == 1
    assert after["hosts"]["hv1"]["domains"] == {
        "web-hv1": {"sync": "synced", "health": "running", "message": ""}
    }


def test_a_status_file_of_the_older_shape_loads_and_bad_history_entries_are_left_out(tmp_path):
    path = tmp_path / "status.json"
    old = {"revision": "r1", "result": "applied", "appliedRevision": "r1", "message": "m", "time": "t"}
    path.write_text(json.dumps({"hosts": {"hv1": old}, "source": {}, "reconciledRevision": "r1"}))
    assert StatusStore.load(path).host("hv1") == HostStatus("r1", "applied", "r1", "m", "t")
    assert StatusStore.load(path).document()["history"] == []
    good = {
        "time": "t",
        "hosts": ["hv1"],
        "revision": "r1",
        "trigger": "webhook",
        "result": "applied",
        "actions": ["define web"],
        "message": "1 action(s): define web",
        "duration": 0.5,
    }
    bad = [{**good, "hosts": "hv1"}, {**good, "extra": 1}, {"time": "t"}, "text", {**good, "duration": "x"}]
    path.write_text(json.dumps({"hosts": {"hv1": old}, "history": [*bad, good]}))
    loaded = StatusStore.load(path)
    merged = {"count": 1, "first": ""}  # an entry saved before identical passes were merged
    assert loaded.document()["history"] == [good | merged] and loaded.host("hv1").result == "applied"
    path.write_text(json.dumps({"history": [{**good, "count": 0}, {**good, "count": 3, "first": "t0"}]}))
    assert StatusStore.load(path).document()["history"] == [good | {"count": 3, "first": "t0"}]
    path.write_text(json.dumps({"hosts": {"hv1": old}, "history": {"not": "a list"}}))
    assert StatusStore.load(path).host("hv1").result == "applied"


def test_invalid_manifests_are_an_error_in_the_history_and_the_metrics(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    assert sample(daemon, "virt_reconcile_revision_ok") == 1
    commit(
        source, "r2", host_yaml("hv1"), "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: x}\n"
    )
    settle(daemon, [(Trigger.WEBHOOK, None)])
    [entry, _applied] = daemon.status.document()["history"]
    assert (entry["hosts"], entry["revision"], entry["trigger"], entry["result"]) == (
        ["hv1"],
        "r2",
        "webhook",
        "error",
    )
    assert entry["message"].startswith("manifests invalid at r2:")
    assert sample(daemon, "virt_reconcile_revision_ok") == 0
    assert sample(daemon, "virt_reconcile_manifest_errors_total") == 1
    commit(source, "r3", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"))
    settle(daemon, [(Trigger.WEBHOOK, None)])
    assert sample(daemon, "virt_reconcile_revision_ok") == 1


# ----------------------------------------------------------------------------- per-domain states


def test_a_domain_removed_with_prune_off_is_an_orphan_in_status_and_metrics(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path, domains=("web", "db"))
    settle(daemon, START)
    commit(source, "r2", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"))
    settle(daemon, [(Trigger.WEBHOOK, None)])
    host = daemon.status.document()["hosts"]["hv1"]
    assert host["result"] == "unchanged"  # nothing to do: the orphan is kept
    assert host["domains"]["db-hv1"]["sync"] == "orphan"
    assert "prune is off" in host["domains"]["db-hv1"]["message"]
    assert host["domains"]["web-hv1"]["sync"] == "synced"
    assert sample(daemon, "virt_reconcile_domains", host="hv1", sync="orphan") == 1
    assert sample(daemon, "virt_reconcile_domains", host="hv1", sync="synced") == 1
    assert sample(daemon, "virt_reconcile_domains", host="hv1", sync="error") == 0
    assert sample(daemon, "virt_reconcile_orphans", host="hv1") == 1


def test_a_refused_host_shows_its_refused_domain_and_the_usage_it_stays_at(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    big = domain_yaml("big", host="hv1", vcpus=60, state="stopped")
    commit(source, "r2", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"), big)
    settle(daemon, [(Trigger.WEBHOOK, None)])
    host = daemon.status.document()["hosts"]["hv1"]
    assert host["result"] == "refused"
    assert host["domains"]["big"]["sync"] == "refused" and host["domains"]["big"]["health"] == "missing"
    assert host["domains"]["web-hv1"]["sync"] == "synced"
    rows = {row["rule"]: row for row in host["policy"]}
    assert rows["cpu.total"] == {
        "rule": "cpu.total",
        "unit": "vCPUs",
        "usage": 1,  # held: the plan was not applied
        "planned": 61,  # where the plan would have taken it: within the limit
        "limit": 64,
        "ok": True,
    }
    # The rule that refused it is not ok, though the usage held is within its limit.
    assert rows["cpu.perDomain"] | {"unit": None} == {
        "rule": "cpu.perDomain",
        "unit": None,
        "usage": 1,
        "planned": 60,
        "limit": 16,
        "ok": False,
    }
    assert [name for name, row in rows.items() if not row["ok"]] == ["cpu.perDomain"]
    assert daemon.status.document()["history"][0]["result"] == "refused"


def test_a_running_domain_whose_vcpus_change_waits_for_a_restart(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    commit(source, "r2", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1", vcpus=2))
    settle(daemon, [(Trigger.WEBHOOK, None)])
    host = daemon.status.document()["hosts"]["hv1"]
    assert host["domains"]["web-hv1"]["sync"] == "pendingRestart", host["domains"]
    assert host["pendingRestarts"] == ["web-hv1"]
    assert sample(daemon, "virt_reconcile_pending_restarts", host="hv1") == 1


# ------------------------------------------------------------------------------------- in progress


class GatedHypervisor(FakeHypervisor):
    """An in-memory host whose starts wait until the test opens the gate."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.entered, self.gate = threading.Event(), threading.Event()

    def start(self, name: str) -> None:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        super().start(name)


def test_a_pass_is_in_progress_from_its_start_to_its_end(tmp_path):
    daemon, _source, hosts = in_process_daemon(tmp_path)
    gated = hosts.hypervisors["hv1"] = GatedHypervisor("hv1")
    daemon.reconcile_pass(START)
    try:
        assert gated.entered.wait(30), "the lane never started the domain"
        [running] = daemon.status.document()["inProgress"]
        assert (running["hosts"], running["revision"], running["trigger"]) == (["hv1"], "r1", "new revision")
        assert running["started"]
        assert sample(daemon, "virt_reconcile_passes_in_progress") == 1
    finally:
        gated.gate.set()
        assert daemon.lanes.wait_idle(30)
    assert daemon.status.document()["inProgress"] == []
    assert sample(daemon, "virt_reconcile_passes_in_progress") == 0


# -------------------------------------------------------------------------------------------- logs


def test_a_source_error_is_logged_once_until_its_reason_changes_or_it_ends(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="virt_reconcile")
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    refused = RevisionRefusedError("revision abc of main refused: not signed")
    source.fail_with = [refused, refused, refused, RevisionRefusedError("revision def refused: rewinds")]
    for _ in range(4):
        settle(daemon, [(Trigger.POLL, None)])
    assert sample(daemon, "virt_reconcile_revision_ok") == 0  # a refused revision is worth an alert
    assert [e["result"] for e in daemon.status.document()["history"][:2]] == ["error", "error"]
    settle(daemon, [(Trigger.POLL, None)])  # the source is back, at the revision applied
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line.split(";")[0] for line in warnings] == [
        "fetch failed: revision abc of main refused: not signed",
        "fetch failed: revision def refused: rewinds",
    ]
    assert any(r.getMessage() == "source: fetched r1, the source error is over" for r in caplog.records)
    assert sample(daemon, "virt_reconcile_fetch_failures_total") == 4
    assert sample(daemon, "virt_reconcile_revision_ok") == 1


def test_a_refusal_is_logged_once_per_host_revision_and_message(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="virt_reconcile")
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    big = domain_yaml("big", host="hv1", vcpus=60, state="stopped")
    commit(source, "r2", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"), big)
    settle(daemon, [(Trigger.WEBHOOK, None)])
    settle(daemon, [(Trigger.RESYNC, None)])  # the same refusal: not logged again
    settle(daemon, [(Trigger.DRIFT, "hv1")])
    commit(source, "r3", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"), big)
    settle(daemon, [(Trigger.WEBHOOK, None)])  # a new revision refused the same way: news
    settle(daemon, [(Trigger.RESYNC, None)])
    commit(source, "r4", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"))
    settle(daemon, [(Trigger.WEBHOOK, None)])
    commit(source, "r5", host_yaml("hv1"), domain_yaml("web-hv1", host="hv1"), big)
    settle(daemon, [(Trigger.WEBHOOK, None)])  # refused again after a good revision
    refusals = [
        (r.levelname, r.getMessage().split(":")[0:2])
        for r in caplog.records
        if " refused at " in r.getMessage()
    ]
    assert [line for line in refusals if line[0] == "WARNING"] == [
        ("WARNING", ["hv1", " refused at r2 (new revision)"]),
        ("WARNING", ["hv1", " refused at r3 (new revision)"]),
        ("WARNING", ["hv1", " refused at r5 (new revision)"]),
    ]
    assert sample(daemon, "virt_reconcile_refusals_total", host="hv1") == 6  # each pass still counted


def test_an_unknown_host_is_logged_once_per_revision(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="virt_reconcile")
    daemon, source, _hosts = in_process_daemon(tmp_path, hosts=("hv1",))
    daemon.config.hosts = ["hv1", "hv9"]  # --host hv1 --host hv9
    settle(daemon, START)
    settle(daemon, [(Trigger.RESYNC, None)])
    source.revision = "r2"
    settle(daemon, [(Trigger.POLL, None)])
    lines = [r.getMessage() for r in caplog.records if "hv9" in r.getMessage()]
    assert lines == [
        "--host hv9: no Host document with this name in the manifests at r1",
        "--host hv9: no Host document with this name in the manifests at r2",
    ]
    assert daemon.status.document()["hosts"]["hv9"]["result"] == "error"


# ------------------------------------------------------------------------- virt-reconcile status


@pytest.fixture
def serve_status():
    """A local HTTP server answering ``/status`` with the document the test sets."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(served).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(document: dict) -> str:
        served.clear()
        served.update(document)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    server.shutdown()
    server.server_close()


def status_of(result: str, **more) -> dict:
    return {"revision": "r2", "result": result, "appliedRevision": "r1", "message": "", "time": "t", **more}


def test_status_exits_0_only_when_every_host_is_applied_or_unchanged(serve_status):
    from tests.helpers import cli

    ok = {"hosts": {"hv1": status_of("applied"), "hv2": status_of("unchanged"), "hv3": status_of("pending")}}
    assert cli("status", "--url", serve_status(ok)).code == 0
    for bad in ("refused", "error"):
        document = {"hosts": {"hv1": status_of("applied"), "hv2": status_of(bad, message="why")}}
        shown = cli("status", "--url", serve_status(document))
        assert shown.code == 1 and "hv2  " + bad in shown.out and "  why" in shown.out
    failing = {"hosts": {}, "source": {"revision": "", "message": "fetch failed: git: down", "time": "t"}}
    shown = cli("status", "--url", serve_status(failing))
    assert shown.code == 1 and "source: fetch failed: git: down" in shown.out


def test_status_exits_1_when_the_revision_is_invalid_before_any_host_is_known(serve_status):
    from tests.helpers import cli

    invalid = {"hosts": {}, "reconciledRevision": "r1", "revisionError": "manifests invalid at r1: x.yaml:3"}
    shown = cli("status", "--url", serve_status(invalid))
    assert shown.code == 1 and "revision: manifests invalid at r1: x.yaml:3" in shown.out
    waiting = {"hosts": {"hv1": status_of("deferred"), "hv2": status_of("suspended")}}
    assert cli("status", "--url", serve_status(waiting)).code == 0  # waiting on purpose: no alarm


def test_status_prints_the_domains_needing_attention_the_passes_running_and_the_last_ones(serve_status):
    from tests.helpers import cli

    domains = {
        "web": {"sync": "synced", "health": "running", "message": ""},
        "old": {"sync": "orphan", "health": "shutoff", "message": "no longer in git, kept: prune is off"},
        "db": {"sync": "pendingRestart", "health": "running", "message": "takes effect at the next restart"},
        "lab": {"sync": "suspended", "health": "shutoff", "message": "left alone"},
    }
    passes = [
        {
            "time": f"t{i}",
            "hosts": ["hv1"],
            "revision": f"rev{i}",
            "trigger": "webhook",
            "result": "applied",
            "actions": [f"update vm{i}"],
            "message": "",
            "duration": 0.25,
        }
        for i in range(8)
    ]
    passes[1] |= {"result": "error", "actions": [], "message": "hv1: connection refused", "count": 60}
    passes[1] |= {"first": "t0", "trigger": "retry"}
    document = {
        "hosts": {"hv1": status_of("applied", domains=domains, deferred="outside the sync windows")},
        "inProgress": [{"hosts": ["hv2"], "revision": "abc", "trigger": "drift", "started": "t9"}],
        "history": passes,
    }
    shown = cli("status", "--url", serve_status(document))
    assert shown.code == 0, shown.out
    lines = shown.out.splitlines()
    assert "  ! old orphan (shutoff): no longer in git, kept: prune is off" in lines
    assert "  ↻ db pendingRestart (running): takes effect at the next restart" in lines
    assert "  ‖ lab suspended (shutoff): left alone" in lines
    assert "  changes wait: outside the sync windows" in lines
    assert not any(" web " in line for line in lines)
    assert "in progress: hv2 at abc (drift) since t9" in lines
    assert "  t0  hv1  applied  rev0 (webhook, 0.2s): update vm0" in lines
    assert "  t1  hv1  error ×60 since t0  rev1 (retry, 0.2s): hv1: connection refused" in lines
    assert not any("rev5" in line for line in lines)  # five passes shown
