"""Operating the daemon as a real process (a local bare git repository, a sandbox host): what
``virt-reconcile status`` says and exits with, the history of passes, and the log's lines."""

from __future__ import annotations

import json
import re
import time

from tests.daemon_helpers import LOG_PREFIX, DaemonProcess
from tests.helpers import cli, domain_yaml
from tests.sandbox.test_daemon import host

SECRET = b"s3cret"


def test_status_exits_1_on_a_refusal_and_shows_the_domains_and_the_last_passes(repo, daemons):
    first = repo.commit({"hosts.yaml": host(cpus=4), "web.yaml": domain_yaml("web", vcpus=2)})
    daemon = daemons(repo)
    daemon.wait_for("hv1", result="applied", revision=first)
    shown = cli("status", "--url", daemon.url)
    assert shown.code == 0, shown.out
    assert "last passes:" in shown.out and "define web, start web" in shown.out

    bad = repo.commit({"big.yaml": domain_yaml("big", vcpus=4, state="stopped")})
    assert daemon.webhook() == 202
    daemon.wait_for("hv1", result="refused", revision=bad)
    refused = cli("status", "--url", daemon.url)
    assert refused.code == 1, refused.out
    hosts_part, passes = refused.out.split("last passes:")
    assert "✗ big refused (missing): refused by the overcommit policy: cpu.total: 2 → 6 vCPUs" in hosts_part
    assert " web " not in hosts_part  # synced: no line of its own
    assert "refused" in passes

    fixed = repo.commit({"big.yaml": domain_yaml("big", vcpus=2, state="stopped")})
    assert daemon.webhook() == 202
    daemon.wait_for("hv1", result="applied", revision=fixed)
    document = daemon.status()
    assert {name: d["sync"] for name, d in document["hosts"]["hv1"]["domains"].items()} == {
        "big": "synced",
        "web": "synced",
    }
    results = [entry["result"] for entry in document["history"]]
    assert results.index("applied") < results.index("refused") < len(results) - 1  # newest first, all kept
    assert cli("status", "--url", daemon.url).code == 0


def test_every_log_line_has_its_time_and_level_and_json_lines_parse(tmp_path, repo, daemons):
    repo.commit({"hosts.yaml": host(), "web.yaml": domain_yaml("web")})
    text = daemons(repo)
    text.wait_for("hv1", result="applied")
    text.wait_for_line("hv1: applied at ")
    assert text.raw and all(LOG_PREFIX.match(line) for line in text.raw), text.raw
    assert re.match(r"\S+Z INFO virt-reconcile daemon: listening on ", text.raw[0])
    text.stop()

    logged = DaemonProcess(
        "--source", repo.url, "--interval", "1h", "--log-format", "json", state_dir=tmp_path / "json-state"
    )
    try:
        logged.start()  # its first line, an object too, says where it listens
        logged.wait_for("hv1", result="applied")
        logged.wait_for_line('{"time": ')
        records = [json.loads(line) for line in logged.raw]
        assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
        applied = next(r for r in records if r["message"].startswith("hv1: applied at "))
        assert (applied["level"], applied["logger"], applied["host"], applied["result"]) == (
            "INFO",
            "virt_reconcile.daemon.loop",
            "hv1",
            "applied",
        )
    finally:
        logged.stop()


def labelled(name: str, role: str) -> str:
    """A sandbox Host of 4 CPUs (no CPU overcommit) labelled ``role``, its state file its own."""
    document = host(cpus=4).replace("{name: hv1}", f"{{name: {name}, labels: {{role: {role}}}}}")
    return document.replace("state/hv1.xml", f"state/{name}.xml")


def test_a_host_relabelled_out_of_the_selector_leaves_status_metrics_and_the_status_file(
    tmp_path, repo, daemons
):
    web = domain_yaml("web", host="hv1", vcpus=2)
    big = domain_yaml("big", host="hv2", vcpus=8, state="stopped")  # over hv2's 4 CPUs: refused
    hosts = {"web": labelled("hv1", "web") + "---\n" + labelled("hv2", "web")}
    first = repo.commit({"hosts.yaml": hosts["web"], "domains.yaml": web + "---\n" + big})
    daemon = daemons(repo, "--selector", "role=web")
    daemon.wait_for("hv1", result="applied", revision=first)
    daemon.wait_for("hv2", result="refused", revision=first)
    assert 'host="hv2"' in daemon.get("/metrics")[1].decode()
    assert cli("status", "--url", daemon.url).code == 1

    second = repo.commit({"hosts.yaml": labelled("hv1", "web") + "---\n" + labelled("hv2", "db")})
    assert daemon.webhook() == 202
    saved = tmp_path / "state" / "status.json"
    deadline = time.monotonic() + 30  # a limit on what must happen, far above what it takes
    while json.loads(saved.read_text()).get("reconciledRevision") != second:
        assert time.monotonic() < deadline, daemon.log[-10:]
        time.sleep(0.05)
    assert set(json.loads(saved.read_text())["hosts"]) == {"hv1"}
    document = daemon.status()
    assert set(document["hosts"]) == {"hv1"}
    assert any(entry["hosts"] == ["hv2"] for entry in document["history"])  # the history keeps it
    assert 'host="hv2"' not in daemon.get("/metrics")[1].decode()
    shown = cli("status", "--url", daemon.url)
    assert shown.code == 0, shown.out
