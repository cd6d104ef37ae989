"""Notifications from a real daemon: a local git repository, a sandbox host, and real HTTP receivers
on 127.0.0.1 (a JSON webhook, a Slack-compatible webhook, a GitHub commit status API)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.cli.inputs import connector
from reconciler.daemon import Daemon, DaemonConfig, GitSource, Trigger
from reconciler.daemon.notices import Notifications, named_apart, parse_receiver
from reconciler.spec.manifests import load_manifests
from tests.daemon_helpers import DaemonProcess, Repo
from tests.helpers import domain_yaml

TOKEN = "ghp_not_a_real_token_5678"


def host(cpus: int = 4) -> str:
    return (
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\n"
        f"spec:\n  uri: sandbox:state/hv1.xml\n  capacity: {{cpus: {cpus}, memory: 16GiB}}\n"
        "  overcommit: {cpu: {ratio: 1.0}}\n"
    )


def eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait until ``check()`` holds: it is about passes ending, not about how fast they do."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.02)


def host_status(daemon: Daemon) -> dict:
    return daemon.status.document()["hosts"].get("hv1", {})


def wait_for_host(daemon: Daemon, **expected: str) -> None:
    eventually(
        lambda: all(host_status(daemon).get(key) == value for key, value in expected.items()),
        f"hv1 {expected} (last {host_status(daemon)})",
    )


def sample(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """A real Daemon (git source, libvirt connector on sandbox hosts) running in a thread."""
    running: list[tuple[Daemon, threading.Thread]] = []

    def start(repo: Repo, *urls: str, **delivery: float) -> Daemon:
        receivers = named_apart([parse_receiver(url) for url in urls])
        config = DaemonConfig(
            state_dir=tmp_path / "state",
            listen=("127.0.0.1", 0),
            interval=3600,
            resync=3600,
            notify=Notifications(receivers, **{"backoff": 0.05, **delivery}),  # type: ignore[arg-type]
        )
        daemon = Daemon(config, GitSource(repo.url, "main", "manifests", tmp_path / "state"), connector())
        thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
        thread.start()
        running.append((daemon, thread))
        return daemon

    yield start
    for daemon, thread in running:
        daemon.stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the daemon did not stop"


def stop_by_hand(tmp_path: Path, domain: str) -> None:
    """Someone stops ``domain`` outside git, on the sandbox host the daemon checked out."""
    manifests = load_manifests(tmp_path / "state" / "checkout" / "manifests")
    with libvirt_host.connect(manifests.hosts["hv1"], write=True) as hypervisor:
        hypervisor.stop(domain, 1.0)


def test_applied_refused_and_drift_reach_every_receiver_once(tmp_path, repo, receivers, daemons):
    webhook, slack, github = receivers(), receivers(), receivers(status=201)
    token = tmp_path / "github-token"
    token.write_text(TOKEN)
    first = repo.commit({"hosts.yaml": host(cpus=4), "web.yaml": domain_yaml("web", vcpus=2)})
    daemon = daemons(
        repo,
        webhook.url + "/events",
        f"slack+{slack.url}/services/T0/B0/secret",
        f"github:acme/infra?token-file={token}&api={github.url}/api/v3",
    )
    wait_for_host(daemon, result="applied", revision=first)

    bad = repo.commit({"big.yaml": domain_yaml("big", vcpus=4)})
    daemon.trigger(Trigger.WEBHOOK)
    wait_for_host(daemon, result="refused", revision=bad)
    daemon.trigger(Trigger.RESYNC)  # meets the same refusal: not sent again
    eventually(
        lambda: sample(daemon, "virt_reconcile_reconcile_results_total", host="hv1", result="refused") == 2,
        "the resync's refusal",
    )
    fixed = repo.commit({"big.yaml": domain_yaml("big", vcpus=2)})
    daemon.trigger(Trigger.WEBHOOK)
    wait_for_host(daemon, result="applied", revision=fixed)

    stop_by_hand(tmp_path, "web")
    daemon.trigger(Trigger.DRIFT, "hv1")  # what the event connection would ask on a real host

    events = [r.json for r in webhook.wait_for(4)]
    assert [(e["event"], e["host"], e["revision"]) for e in events] == [
        ("applied", "hv1", first),
        ("refused", "hv1", bad),
        ("applied", "hv1", fixed),
        ("drift", "hv1", fixed),
    ]
    assert events[0]["actions"] == ["define web", "start web"] and events[0]["reason"] == "new revision"
    assert "cpu.total: 2 → 6 vCPUs > floor(4 CPUs × 1) = 4" in events[1]["message"]
    assert events[3]["actions"] == ["start web"] and events[3]["message"].startswith("drift corrected")
    assert {r.path for r in webhook.requests} == {"/events"}

    texts = [r.json["text"] for r in slack.wait_for(4)]
    assert [text.split(" ", 2)[:2] for text in texts] == [
        [":white_check_mark:", "hv1:"],
        [":no_entry:", "hv1:"],
        [":white_check_mark:", "hv1:"],
        [":arrows_counterclockwise:", "hv1:"],
    ]
    assert {r.path for r in slack.requests} == {"/services/T0/B0/secret"}

    statuses = github.wait_for(4)
    assert [(r.path, r.json["state"]) for r in statuses] == [
        (f"/api/v3/repos/acme/infra/statuses/{first}", "success"),
        (f"/api/v3/repos/acme/infra/statuses/{bad}", "failure"),
        (f"/api/v3/repos/acme/infra/statuses/{fixed}", "success"),
        (f"/api/v3/repos/acme/infra/statuses/{fixed}", "success"),
    ]
    assert all(
        r.json["context"] == "virt-reconcile/hv1" and len(r.json["description"]) <= 140 for r in statuses
    )
    assert {r.headers["Authorization"] for r in statuses} == {f"Bearer {TOKEN}"}
    for name in ("webhook:" + webhook.url, "slack:" + slack.url, "github:acme/infra"):  # no path: a secret
        eventually(
            lambda name=name: (
                sample(daemon, "virt_reconcile_notifications_total", receiver=name, result="sent") == 4
            ),
            f"4 sent to {name}",
        )
    assert TOKEN.encode() not in daemon.metrics.exposition() and b"secret" not in daemon.metrics.exposition()


def test_a_revision_no_host_can_use_is_an_error_sent_once_and_its_revert_clears_it(
    tmp_path, repo, receivers, daemons, caplog
):
    caplog.set_level(logging.WARNING, logger="virt_reconcile")
    webhook = receivers()
    first = repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web", vcpus=1)})
    daemon = daemons(repo, webhook.url)
    wait_for_host(daemon, result="applied", revision=first)
    broken = repo.commit({"web.yaml": "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: web}\n"})
    daemon.trigger(Trigger.WEBHOOK)
    wait_for_host(daemon, result="error", revision=broken)
    webhook.wait_for(2)
    daemon.trigger(Trigger.RESYNC)  # loads the broken revision again: the same error, not sent again
    eventually(lambda: caplog.text.count(f"manifests invalid at {broken[:12]}") == 2, "the resync")
    reverted = repo.commit({"web.yaml": domain_yaml("web", vcpus=1)})  # the revert changes nothing
    daemon.trigger(Trigger.WEBHOOK)
    wait_for_host(daemon, result="unchanged", revision=reverted)

    events = [r.json for r in webhook.wait_for(3)]
    assert [(e["event"], e["host"], e["revision"]) for e in events] == [
        ("applied", "hv1", first),
        ("error", None, broken),
        ("applied", "hv1", reverted),  # the alert clears although nothing changed
    ]
    assert events[1]["message"].startswith(f"manifests invalid at {broken[:12]}")
    assert events[2]["message"] == "no changes"


def test_a_hung_receiver_delays_no_pass_and_no_other_receiver(tmp_path, repo, receivers, daemons):
    hung, healthy = receivers(hang=True), receivers()
    revisions = [repo.commit({"hosts.yaml": host(cpus=8), "web.yaml": domain_yaml("web", vcpus=1)})]
    daemon = daemons(repo, hung.url, healthy.url, timeout=60, attempts=1)
    wait_for_host(daemon, result="applied", revision=revisions[0])
    hung.wait_for(1)  # its sender now waits on the first notice, for up to a minute
    for vcpus in (2, 3):
        revisions.append(repo.commit({"web.yaml": domain_yaml("web", vcpus=vcpus)}))
        daemon.trigger(Trigger.WEBHOOK)
        wait_for_host(daemon, result="applied", revision=revisions[-1])

    assert [r.json["revision"] for r in healthy.wait_for(3)] == revisions
    assert len(hung.requests) == 1  # both later passes ended while the first notice still hung
    hung.release()
    assert [r.json["revision"] for r in hung.wait_for(3)] == revisions  # nothing lost, in order


def test_the_notify_option_of_the_daemon_command_reaches_its_receiver(tmp_path, repo, receivers):
    webhook = receivers()
    first = repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web", vcpus=1)})
    url_file = tmp_path / "notify-url"  # the secret URL kept out of the command line
    url_file.write_text(f"slack+{webhook.url}/services/secret\n")
    args = ("--source", repo.url, "--interval", "1h", "--notify", f"@{url_file}")
    process = DaemonProcess(*args, state_dir=tmp_path / "state").start()
    try:
        assert process.proc is not None
        assert b"secret" not in Path(f"/proc/{process.proc.pid}/cmdline").read_bytes()
        process.wait_for("hv1", result="applied", revision=first)
        assert (
            webhook.wait_for(1)[0].json["text"].startswith(f":white_check_mark: hv1: applied at {first[:12]}")
        )
        assert webhook.requests[0].path == "/services/secret"
        sent = f'virt_reconcile_notifications_total{{receiver="slack:{webhook.url}",result="sent"}} 1.0'
        eventually(lambda: sent in process.get("/metrics")[1].decode(), sent)
        metrics = process.get("/metrics")[1].decode()
        assert "secret" not in metrics and "secret" not in "\n".join(process.log)
        assert process.terminate() == 0
    finally:
        process.stop()
