"""The overcommit policy on sandbox hosts: refusals change nothing, warn applies, fixes go through."""

from __future__ import annotations

import json

from tests.helpers import cli, domain_yaml, host_yaml, write

POLICY = """\
  overcommit:
    enforcement: {enforcement}
    cpu: {{ratio: 1.0}}
    memory: {{ratio: 1.0, reserved: 1GiB}}
"""


def small_host(root, name="hv1", state="state/hv1.xml", enforcement="enforce"):
    """A 4-CPU, 8 GiB host: 4 vCPUs and 7 GiB of memory to hand out."""
    return host_yaml(name, state, cpus=4, memory="8GiB") + POLICY.format(enforcement=enforcement)


def test_refused_plan_exits_3_and_apply_changes_nothing(sandbox):
    write(sandbox.root, "hosts.yaml", small_host(sandbox.root))
    sandbox.domains(a={"vcpus": 2})
    assert cli("apply", str(sandbox.root)).code == 0
    before = sandbox.state.read_bytes()
    sandbox.domains(a={"vcpus": 2}, b={"vcpus": 3})
    planned = cli("plan", str(sandbox.root))
    assert planned.code == 3
    assert (
        "✗ refused by policy: cpu.total: 2 → 5 vCPUs > floor(4 CPUs × 1) = 4 (adding most: b +3)"
        in planned.out
    )
    doc = json.loads(cli("plan", str(sandbox.root), "--format", "json").out)
    assert doc["hosts"]["hv1"]["refused"] is True
    assert doc["hosts"]["hv1"]["policy"]["cpu.total"] | {"arithmetic": None} == {
        "before": 2,
        "after": 5,
        "peak": 5,
        "limit": 4,
        "ok": False,
        "raised": True,
        "unit": "vCPUs",
        "arithmetic": None,
    }
    applied = cli("apply", str(sandbox.root))
    assert applied.code == 3
    assert "Refused by the overcommit policy on hv1" in applied.out
    assert sandbox.state.read_bytes() == before


def test_every_plan_shows_how_full_the_host_is(sandbox):
    write(sandbox.root, "hosts.yaml", small_host(sandbox.root))
    sandbox.domains(a={"vcpus": 2, "memory": "2GiB", "currentMemory": "1GiB"})
    out = cli("plan", str(sandbox.root)).out
    cpu = "cpu.total 0→2/4  cpu.perDomain 0→2/4"
    memory = "memory.commit 0B→2GiB/7GiB  memory.balloon 0B→1GiB/7GiB"
    assert f"policy: {cpu}  {memory}" in out
    cli("apply", str(sandbox.root))
    assert "policy: cpu.total 2/4  cpu.perDomain 2/4  memory.commit 2GiB/7GiB  memory.balloon 1GiB/7GiB" in (
        cli("plan", str(sandbox.root)).out
    )


def test_warn_reports_and_applies(sandbox):
    write(sandbox.root, "hosts.yaml", small_host(sandbox.root, enforcement="warn"))
    sandbox.domains(a={"vcpus": 3}, b={"vcpus": 3})
    planned = cli("plan", str(sandbox.root))
    assert planned.code == 2
    assert "! policy warning (enforcement: warn): cpu.total: 0 → 6 vCPUs" in planned.out
    assert cli("apply", str(sandbox.root)).code == 0
    assert set(sandbox.view()) == {"a", "b"}


UNMANAGED = """<domain type='kvm'><name>theirs</name><uuid>5b1c2c1e-7b53-4a43-9a0e-1c0ffee00002</uuid>
<memory unit='KiB'>6291456</memory><vcpu>4</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"""


def test_an_overloaded_host_can_always_be_shrunk(sandbox):
    write(sandbox.root, "hosts.yaml", small_host(sandbox.root, enforcement="warn"))
    sandbox.domains(a={"vcpus": 2, "memory": "2GiB"})
    cli("apply", str(sandbox.root))
    sandbox.seed(UNMANAGED)  # someone else's 4 vCPUs and 6 GiB: the host is now over both limits
    write(sandbox.root, "hosts.yaml", small_host(sandbox.root))
    sandbox.domains(a={"vcpus": 2, "memory": "2GiB"}, b={})
    grow = cli("plan", str(sandbox.root))
    assert grow.code == 3 and "cpu.total: 6 → 7 vCPUs" in grow.out
    sandbox.domains(a={"vcpus": 1, "memory": "1GiB"})
    shrink = cli("apply", str(sandbox.root))
    assert shrink.code == 0, shrink.out
    assert "cpu.total 6→5/4 ✗" in shrink.out  # still over, but better: allowed
    assert sandbox.view()["a"].vcpus == 1
    assert sandbox.view()["theirs"].vcpus == 4


def test_a_refused_host_does_not_stop_the_others(sandbox):
    write(sandbox.root, "hosts.yaml", small_host(sandbox.root) + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(
        sandbox.root,
        "domains.yaml",
        domain_yaml("big", host="hv1", vcpus=8) + "---\n" + domain_yaml("fine", host="hv2", vcpus=8),
    )
    applied = cli("apply", str(sandbox.root))
    assert applied.code == 3
    assert not sandbox.state.exists()
    assert "<name>fine</name>" in (sandbox.root / "state" / "hv2.xml").read_text()
