"""The reconciler across a fleet of real libvirtd daemons: hosts worked side by side, picked by their
labels, a hung or silent host failing alone within its timeouts, output in manifest order, and a
domain moving between two daemons.

A run that could hang on a host that never answers runs in a process of its own (the CLI, or one
engine pass) with a deadline, so a missing timeout fails its test instead of stalling the tier. The
only upper time bounds are far above what is expected (a minute for a 2 s connect timeout).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
import yaml

from tests.fleetlab import FleetLab, host_document
from tests.helpers import REPO, Run, cli, write

TIMEOUTS = {"connect": "2s", "call": "6s"}
#: Far above a 2 s connect or a 6 s call timeout on a busy 2-core machine; only proves no hang.
NO_HANG = 60.0
LABELS = [{"role": "web", "zone": "a"}, {"role": "web", "zone": "b"}, {"role": "db", "zone": "a"}]
LABELS += [{"role": "db", "zone": "b"}]


def domain(name: str, host: str, **spec: object) -> dict:
    """A small Domain document (no disks or NICs: nothing for the pre-flight to find missing)."""
    body = {"vcpus": 1, "memory": "64MiB", **spec}
    return {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Domain",
        "metadata": {"name": name, "host": host},
        "spec": body,
    }


def manifests(root: Path, hosts: list[dict], domains: list[dict]) -> None:
    """Write the Host documents (in this order) and the Domain documents."""
    write(root, "hosts.yaml", yaml.safe_dump_all(hosts, sort_keys=False))
    write(root, "domains.yaml", yaml.safe_dump_all(domains, sort_keys=False) if domains else "# none\n")


def one_domain_each(lab: FleetLab, root: Path) -> None:
    """Every lab host (labelled from LABELS in turn) with one domain ``d-HOST``."""
    hosts = [h.document(labels=LABELS[i % len(LABELS)]) for i, h in enumerate(lab.hosts)]
    manifests(root, hosts, [domain(f"d-{h.name}", h.name) for h in lab.hosts])


def plan_json(root: Path, *extra: str) -> tuple[int, dict]:
    """``plan --format json``: the exit code and the document."""
    result = cli("plan", str(root), "--format", "json", *extra)
    assert result.out.strip(), result.err
    return result.code, json.loads(result.out)


def run_process(*args: str, deadline: float = 120.0) -> tuple[Run, float]:
    """The CLI in a subprocess (killed past ``deadline``), with how long it took."""
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=deadline,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"virt-reconcile {' '.join(args)} did not return within {deadline:.0f} s")
    return Run(done.returncode, done.stdout, done.stderr), time.monotonic() - began


def running(lab: FleetLab, host: str, name: str) -> bool:
    """Whether ``name`` is defined on the lab host and runs there."""
    try:
        return bool(lab[host].connection().lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """A text plan's host blocks in output order: each header's host name with the lines under it."""
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9][\w.-]*  \S", line):
            found.append((line.split()[0], []))
        elif line.startswith("  ") and found:
            found[-1][1].append(line.strip())
    return found


def test_a_fleet_of_twelve_behind_latency_converges(make_lab, tmp_path):
    lab = make_lab(hosts=12, latency_ms=20)
    hosts = [h.document(timeouts=TIMEOUTS) for h in lab.hosts]
    domains = [domain(f"{h.name}-vm{i}", h.name) for h in lab.hosts for i in range(5)]
    manifests(tmp_path, hosts, domains)
    assert cli("plan", str(tmp_path)).code == 2
    applied = cli("apply", str(tmp_path))
    assert applied.code == 0, applied.out + applied.err
    assert all(running(lab, h.name, f"{h.name}-vm{i}") for h in lab.hosts for i in range(5))
    assert cli("plan", str(tmp_path)).code == 0


def test_output_is_grouped_per_host_in_manifest_order(make_lab, tmp_path):
    lab = make_lab(hosts=6, latency_ms=20)
    order = ["hv03", "hv00", "hv05", "hv01", "hv04", "hv02"]  # not the hypervisors' sorted order
    domains = [domain(f"{name}-vm{i}", name) for name in order for i in range(3)]
    manifests(tmp_path, [lab[name].document() for name in order], domains)
    planned = cli("plan", str(tmp_path))
    assert planned.code == 2, planned.err
    found = blocks(planned.out)
    assert [name for name, _ in found] == order
    for name, lines in found:
        defined = [line.split()[-1] for line in lines if line.startswith("+ define")]
        assert defined == [f"{name}-vm{i}" for i in range(3)], (name, lines)
    code, doc = plan_json(tmp_path)
    assert code == 2 and list(doc["hosts"]) == order
    applied = cli("apply", str(tmp_path))
    assert applied.code == 0, applied.out + applied.err
    result_hosts = re.findall(r"^  [+>] (?:define|start) (hv\d\d)-vm\d: ", applied.out, re.MULTILINE)
    assert [name for i, name in enumerate(result_hosts) if i == 0 or result_hosts[i - 1] != name] == order


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (["role=web"], ["hv00", "hv01"]),
        (["role!=web"], ["hv02", "hv03"]),
        (["role=web,zone=a"], ["hv00"]),
        (["role=web", "zone=a"], ["hv00"]),  # repeated: every requirement holds, as with commas
        (["zone=b,role!=web"], ["hv03"]),
    ],
)
def test_selector_picks_hosts_by_label(make_lab, tmp_path, selectors, expected):
    lab = make_lab(hosts=4)
    one_domain_each(lab, tmp_path)
    options = [item for text in selectors for item in ("--selector", text)]
    code, doc = plan_json(tmp_path, *options)
    assert code == 2
    assert list(doc["hosts"]) == expected
    assert sorted({action["host"] for action in doc["actions"]}) == expected


def test_apply_with_a_selector_changes_only_the_selected_hosts(make_lab, tmp_path):
    lab = make_lab(hosts=4)
    one_domain_each(lab, tmp_path)
    applied = cli("apply", str(tmp_path), "--selector", "role=web")
    assert applied.code == 0, applied.out + applied.err
    assert [h.name for h in lab.hosts if running(lab, h.name, f"d-{h.name}")] == ["hv00", "hv01"]
    assert all(f"d-{h.name}" not in h.domain_names() for h in lab.hosts[2:])


def test_a_selector_that_matches_no_host_is_an_error(make_lab, tmp_path):
    lab = make_lab(hosts=2)
    one_domain_each(lab, tmp_path)
    for command in ("plan", "apply"):
        result = cli(command, str(tmp_path), "--selector", "role=cache")
        assert result.code == 1, (command, result.out, result.err)
        assert "role=cache" in result.err
    assert all(h.domain_names() == {"test"} for h in lab.hosts)


def test_host_parallel_changes_nothing_but_speed(make_lab, tmp_path):
    lab = make_lab(hosts=8, latency_ms=20)
    one_domain_each(lab, tmp_path)
    outputs = {n: cli("plan", str(tmp_path), "--host-parallel", n) for n in ("1", "3", "16")}
    assert {result.code for result in outputs.values()} == {2}, {n: r.err for n, r in outputs.items()}
    assert outputs["1"].out == outputs["3"].out == outputs["16"].out == cli("plan", str(tmp_path)).out
    applied = cli("apply", str(tmp_path), "--host-parallel", "3")
    assert applied.code == 0, applied.out + applied.err
    assert all(running(lab, h.name, f"d-{h.name}") for h in lab.hosts)


def hung_fleet(lab: FleetLab, root: Path) -> list[str]:
    """Four live hosts, each running its domain ``d-HOST`` (applied first, without the hung host:
    a domain new to its host would rightly be held while any host cannot be looked at); then the
    manifests stop every domain and add, in the middle, a host that accepts and never answers.
    Returns the host names in manifest order."""
    live = [h.document(timeouts=TIMEOUTS) for h in lab.hosts]
    manifests(root, live, [domain(f"d-{h.name}", h.name) for h in lab.hosts])
    applied = cli("apply", str(root))
    assert applied.code == 0, applied.out + applied.err
    hung = host_document("hung", lab.hung().uri, timeouts=TIMEOUTS)
    hosts = [*live[:2], hung, *live[2:]]
    manifests(root, hosts, [domain(f"d-{h.name}", h.name, state="stopped") for h in lab.hosts])
    return [h["metadata"]["name"] for h in hosts]


def no_answer(text: str) -> bool:
    """Whether an error says the host did not answer (in time)."""
    return re.search(r"(did not|no) answer", text) is not None


def test_plan_with_a_hung_host_shows_every_other_plan(make_lab, tmp_path):
    lab = make_lab(hosts=4, latency_ms=20)
    order = hung_fleet(lab, tmp_path)
    result, elapsed = run_process("plan", str(tmp_path), "--format", "json")
    assert elapsed < NO_HANG, elapsed
    assert result.code == 1, result.err
    doc = json.loads(result.out)
    assert list(doc["hosts"]) == order
    assert no_answer(" ".join(doc["hosts"]["hung"]["errors"])), doc["hosts"]["hung"]
    planned = [(a["action"], a["host"], a["domain"]) for a in doc["actions"]]
    assert planned == [("stop", h.name, f"d-{h.name}") for h in lab.hosts]
    assert all(doc["hosts"][h.name]["errors"] == [] for h in lab.hosts), doc["hosts"]
    text, elapsed = run_process("plan", str(tmp_path))
    assert elapsed < NO_HANG and text.code == 1
    assert [name for name, _ in blocks(text.out)] == order


def test_apply_with_a_hung_host_applies_every_other_host(make_lab, tmp_path):
    lab = make_lab(hosts=4, latency_ms=20)
    order = hung_fleet(lab, tmp_path)
    result, elapsed = run_process("apply", str(tmp_path))
    assert elapsed < NO_HANG, elapsed
    assert result.code == 1, result.out + result.err
    assert no_answer(result.out + result.err), result.out + result.err
    assert not any(running(lab, h.name, f"d-{h.name}") for h in lab.hosts)
    assert all(f"d-{h.name}" in h.domain_names() for h in lab.hosts)  # stopped, still defined
    assert [name for name, _ in blocks(result.out)][: len(order)] == order


def test_a_domain_moves_between_two_daemons_in_one_apply(make_lab, tmp_path):
    lab = make_lab(hosts=3, latency_ms=20)
    hosts = [h.document() for h in lab.hosts]
    stay = [domain(f"stay-{h.name}", h.name) for h in lab.hosts]
    manifests(tmp_path, hosts, [*stay, domain("mover", "hv00", vcpus=2)])
    assert cli("apply", str(tmp_path)).code == 0
    assert running(lab, "hv00", "mover")

    manifests(tmp_path, hosts, [*stay, domain("mover", "hv02", vcpus=2)])
    code, doc = plan_json(tmp_path)
    assert code == 2
    actions = [(a["action"], a["host"], a["domain"], a["peer"]) for a in doc["actions"]]
    assert [a for a in actions if a[0] == "move"] == [
        ("move", "hv00", "mover", "hv02"),
        ("move", "hv02", "mover", "hv00"),
    ]
    assert not [a for a in actions if a[0] in ("define", "undefine")], actions
    assert doc["summary"]["move"] == 1
    moved = cli("apply", str(tmp_path))
    assert moved.code == 0, moved.out + moved.err
    assert "mover" not in lab["hv00"].domain_names()
    assert running(lab, "hv02", "mover")
    assert lab["hv02"].connection().lookupByName("mover").maxVcpus() == 2
    assert cli("plan", str(tmp_path)).code == 0


def silent_fleet(lab: FleetLab, root: Path, victim_domains: int) -> list[str]:
    """Three hosts through proxies (call timeout 3 s), two domains each but ``victim_domains`` on
    hv01, whose proxy goes silent when hv01-vm0 is sent to be defined: every host is observed and
    planned, then hv01 stops answering mid-apply. Returns hv01's domains."""
    counts = {"hv00": 2, "hv01": victim_domains, "hv02": 2}
    timeouts = {"connect": "2s", "call": "3s"}
    domains = [domain(f"{name}-vm{i}", name) for name, count in counts.items() for i in range(count)]
    manifests(root, [h.document(timeouts=timeouts) for h in lab.hosts], domains)
    proxy = lab["hv01"].proxy
    assert proxy is not None
    proxy.go_silent_on(b"<name>hv01-vm0</name>")  # only a define sends the name in this form
    return [f"hv01-vm{i}" for i in range(victim_domains)]


#: One pass through the engine's Python API with the CLI's own connector, in a process of its own
#: (a call stuck in libvirt cannot be stopped from Python): prints each host's action results.
ENGINE_PASS = """
import json, sys
from reconciler.cli import inputs
from reconciler.engine.reconcile import ReconcileOptions, reconcile
outcome = reconcile(inputs.load(sys.argv[1]), inputs.connector(), ReconcileOptions(apply=True))
def kind(error):
    return [type(error).__name__, str(error)]
print(json.dumps({
    "results": {host: [[r.ok, kind(r.error)] for r in rs] for host, rs in outcome.results.items()},
    "late": {host: kind(error) for host, error in outcome.host_errors.items()},
}))
"""


def test_a_host_silent_mid_apply_fails_alone_with_a_temporary_error(make_lab, tmp_path):
    lab = make_lab(hosts=3, latency_ms=10)
    silent_fleet(lab, tmp_path, victim_domains=1)
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", ENGINE_PASS, str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=2 * NO_HANG,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the pass did not return within {2 * NO_HANG:.0f} s of a host going silent")
    elapsed = time.monotonic() - began
    assert done.returncode == 0 and elapsed < NO_HANG, (elapsed, done.stderr[-2000:])
    outcome = json.loads(done.stdout)
    failed = [error for ok, error in outcome["results"].get("hv01", []) if not ok]
    failed += [outcome["late"]["hv01"]] if "hv01" in outcome["late"] else []
    assert failed and all(kind == "TemporaryHostError" for kind, _ in failed), outcome
    for name in ("hv00", "hv02"):
        assert outcome["results"][name] and all(ok for ok, _ in outcome["results"][name]), outcome
        assert name not in outcome["late"]
        assert all(running(lab, name, f"{name}-vm{i}") for i in range(2))
    assert "hv01-vm0" not in lab["hv01"].domain_names()  # its define never reached the daemon


def test_apply_survives_a_host_going_silent_with_calls_in_flight(make_lab, tmp_path):
    """Several actions of the silent host are in flight at once (``--parallel``): every one of them
    must end, not only the one that noticed the silence."""
    lab = make_lab(hosts=3, latency_ms=10)
    victims = silent_fleet(lab, tmp_path, victim_domains=4)
    result, elapsed = run_process("apply", str(tmp_path), "--parallel", "4")
    assert elapsed < NO_HANG, elapsed
    assert result.code == 1, result.out + result.err
    assert re.search(r"hv01-vm\d: failed", result.out), result.out
    assert all(running(lab, name, f"{name}-vm{i}") for name in ("hv00", "hv02") for i in range(2))
    assert victims[0] not in lab["hv01"].domain_names()


def test_hosts_silent_while_their_lease_is_taken_cost_one_timeout_not_one_each(make_lab, tmp_path):
    """Three hosts go silent as apply takes their leases: each fails within its call timeout, side
    by side, and the fourth (last in the lock order) is applied then, not after three timeouts in
    turn. The deadline, 2.5 call timeouts, lies between the two (far above what the run needs
    beyond its one timeout)."""
    lab = make_lab(hosts=4, latency_ms=2)
    silent, healthy, call = ["hv00", "hv01", "hv02"], "hv03", 12.0
    hosts = [h.document(timeouts={"connect": "2s", "call": f"{call:g}s"}) for h in lab.hosts]
    manifests(tmp_path, hosts, [domain(f"d-{h.name}", h.name) for h in lab.hosts])
    assert cli("apply", str(tmp_path)).code == 0
    manifests(tmp_path, hosts, [domain(f"d-{h.name}", h.name, state="stopped") for h in lab.hosts])
    for name in silent:
        lab[name].proxy.go_silent_on(b"virt-reconcile-lock")
    try:
        result, _elapsed = run_process("apply", str(tmp_path), deadline=2.5 * call)
    finally:
        for name in silent:
            lab[name].proxy.resume()
    assert result.code == 1, result.out + result.err
    assert not running(lab, healthy, f"d-{healthy}")
    assert all(running(lab, name, f"d-{name}") for name in silent)  # nothing changed there
    for name in silent:
        assert f"{name}: cannot take the libvirt network 'virt-reconcile-lock'" in result.out
