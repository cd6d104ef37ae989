"""Markdown plans for pull-request comments, compared with golden files (UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.engine.hypervisor import (
    DomainObservation,
    HostObservation,
    PoolObservation,
    VolumeObservation,
)
from reconciler.engine.plan import DesiredHost, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.pruning import DeletionRules
from reconciler.report import MARKDOWN_MARKER, render_markdown
from reconciler.spec.models import Capacity, Domain, Overcommit, Owner
from tests.helpers import domain_model, observed_domain

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
OWNER = Owner(manifest="vms.yaml", revision="0123456789abcdef0123", spec_hash="h")
GiB = 1024**3


def domain(name: str, **spec) -> Domain:
    return domain_model(name, **spec)


def live(name: str, *, managed: bool = True, active: bool = True, **spec) -> DomainObservation:
    return observed_domain(name, OWNER if managed else None, active=active, **spec)


def host_plan(name, uri, desired, observed, *, cpus=8, **options):
    wanted = DesiredHost(
        name,
        uri,
        {d.name: d for d in desired},
        lambda _n: OWNER,
        DeletionRules(allow=options.get("allow_delete", False), allow_mass=True),
        HostPolicy(Capacity(), options.get("policy") or Overcommit()),
        restart_pending=options.get("restart_pending", False),
    )
    return build_host_plan(wanted, HostObservation(cpus=cpus, memory=16 * GiB, domains=tuple(observed)))


def scenario(name: str) -> Plan:
    hv1 = "qemu+ssh://root@hv1.example.com/system"
    match name:
        case "define":
            hosts = [
                host_plan(
                    "hv1",
                    hv1,
                    [
                        domain(
                            "web-01",
                            vcpus=2,
                            currentMemory="1GiB",
                            disks=[{"path": "/var/lib/libvirt/images/web-01.qcow2"}],
                            interfaces=[{"network": "default"}],
                        )
                    ],
                    [],
                )
            ]
        case "balloon":
            hosts = [host_plan("hv1", hv1, [domain("web-01", currentMemory="1GiB")], [live("web-01")])]
        case "update-restart":
            hosts = [
                host_plan(
                    "hv1",
                    hv1,
                    [domain("db-01", vcpus=4, boot={"cmdline": "console=ttyS0 | tee"})],
                    [live("db-01", vcpus=2)],
                )
            ]
        case "pending-restart":
            marked = OWNER.model_copy(update={"restart_instance": 7, "restart_waits": "vcpus 2 → 1"})
            waiting = replace(observed_domain("db-01", marked, vcpus=1), instance=7)
            hosts = [
                host_plan("hv1", hv1, [domain("db-01", vcpus=1)], [waiting]),
                host_plan(
                    "hv2", "qemu:///system", [domain("db-01", vcpus=1)], [waiting], restart_pending=True
                ),
            ]
        case "undefine":
            hosts = [host_plan("hv1", hv1, [], [live("old-01")], allow_delete=True)]
        case "refusal":
            policy = Overcommit.model_validate({"cpu": {"ratio": 2.5}})
            hosts = [
                host_plan(
                    "hv1",
                    hv1,
                    [
                        domain("a", vcpus=4),
                        domain("b", vcpus=4),
                        domain("c", vcpus=1),
                        domain("web-03", vcpus=2),
                    ],
                    [live("a", vcpus=4), live("b", vcpus=4), live("c", vcpus=1)],
                    cpus=4,
                    policy=policy,
                )
            ]
        case "orphan-conflict":
            hosts = [
                host_plan(
                    "hv1", hv1, [domain("theirs", vcpus=2)], [live("old-01"), live("theirs", managed=False)]
                )
            ]
        case "two-hosts":
            hosts = [
                host_plan("hv1", hv1, [domain("web-01")], [live("web-01")]),
                host_plan("hv2", "qemu:///system", [domain("batch-01", state="stopped")], []),
            ]
        case "volumes":
            hosts = [volumes_plan(hv1)]
        case _:
            raise ValueError(name)
    return Plan(revision="0123456789abcdef0123", hosts={h.host: h for h in hosts})


SCENARIOS = [
    "define",
    "balloon",
    "update-restart",
    "pending-restart",
    "undefine",
    "refusal",
    "orphan-conflict",
    "two-hosts",
    "volumes",
]


def volumes_plan(uri: str):
    """A new domain on an overlay volume, a volume grown live, a pruned domain's volume deleted."""
    images, base = "/var/lib/libvirt/images", "/var/lib/libvirt/images/debian-12.qcow2"

    def volume(name: str, size: str, **extra: object) -> dict:
        return {"volume": {"pool": "images", "name": name, "size": size, **extra}}

    doomed = OWNER.model_copy(update={"delete_volumes": "images/old-01-root"})
    old_disks = [{**volume("old-01-root", "10GiB"), "deleteVolumes": True}]
    gone = observed_domain("old-01", doomed, active=False, disks=old_disks)
    db = [domain("db-01", disks=[volume("db-01-root", "40GiB")])]
    observed = [live("db-01", disks=[volume("db-01-root", "20GiB")]), gone]
    pool = PoolObservation(
        "images", "dir", images, True, True, 500 * GiB, 90 * GiB, 410 * GiB,
        tuple(
            VolumeObservation(n, f"{images}/{n}", size * GiB, GiB)
            for n, size in (("debian-12.qcow2", 2), ("db-01-root", 20), ("old-01-root", 10))
        ),
    )  # fmt: skip
    web = domain("web-01", disks=[volume("web-01-root", "20GiB", **{"from": {"path": base}})])
    rules = DeletionRules(allow=True, allow_mass=True)
    wanted = DesiredHost("hv1", uri, {d.name: d for d in [web, *db]}, lambda _n: OWNER, rules)
    return build_host_plan(wanted, HostObservation(8, 16 * GiB, tuple(observed), pools=(pool,)))


@pytest.mark.parametrize("name", SCENARIOS)
def test_markdown_matches_golden(name):
    text = render_markdown(scenario(name))
    golden = GOLDEN / f"plan-{name}.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), f"{golden.name} differs: review, then UPDATE_GOLDEN=1 to accept"


@pytest.mark.parametrize("name", SCENARIOS)
def test_markdown_is_comment_ready(name):
    text = render_markdown(scenario(name))
    assert text.startswith(MARKDOWN_MARKER)  # lets the workflow find and update its own comment
    assert "\x1b[" not in text
    assert text.count("<details>") == text.count("</details>") == 1
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = line.replace("\\|", "").count("|")
            assert cells in (6, 5), line  # actions: 5 columns; policy: 5 columns


def test_refusal_says_why():
    text = render_markdown(scenario("refusal"))
    assert "❌ Refused by the overcommit policy on hv1" in text
    assert "cpu.total: 9 → 11 vCPUs > floor(4 CPUs × 2.5) = 10 (adding most: web-03 +2)" in text
