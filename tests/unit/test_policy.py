"""The overcommit arithmetic (docs/design.md §4.3): each rule at, just under and just over its limit."""

from __future__ import annotations

import pytest

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.policy import HostFacts, evaluate, host_facts, limit, usage
from reconciler.engine.usage import Usage
from reconciler.spec.models import Capacity, DomainSpec, Overcommit
from reconciler.spec.sizes import parse_size

GiB = 1024**3


def overcommit(**fields) -> Overcommit:
    return Overcommit.model_validate(fields)


def vm(vcpus=1, memory="1GiB", current=None, active=True) -> Usage:
    size = parse_size(memory)
    return Usage(vcpus, size, parse_size(current) if current else size, active)


FACTS = HostFacts(cpus=4, memory=16 * GiB, swap=4 * GiB, ksm_saved=2 * GiB)


def rule(report, name):
    return next(r for r in report.rules if r.rule == name)


def test_cpu_total_message_names_the_arithmetic_and_who_adds_most():
    policy = overcommit(cpu={"ratio": 2.5})
    before = {f"vm{i}": vm(3) for i in range(3)}  # 9 vCPUs
    spec = DomainSpec.model_validate({"vcpus": 2, "memory": "1GiB"})
    actions = [
        Action(ActionKind.DEFINE, "hv", "web-03", Phase.DEFINE, spec=spec),
        Action(ActionKind.START, "hv", "web-03", Phase.START),
    ]
    report = evaluate(policy, FACTS, before, actions)
    total = rule(report, "cpu.total")
    assert (total.before, total.after, total.limit) == (9, 11, 10)
    assert total.message() == "cpu.total: 9 → 11 vCPUs > floor(4 CPUs × 2.5) = 10 (adding most: web-03 +2)"
    assert report.refused and [r.rule for r in report.violations] == ["cpu.total"]


@pytest.mark.parametrize(
    ("vcpus", "ratio", "ok"),
    [
        (16, 4.0, True),  # at the limit: floor(4 × 4) = 16
        (15, 4.0, True),  # just under
        (17, 4.0, False),  # just over
        (3, 0.75, True),  # ratio below 1: floor(4 × 0.75) = 3
        (4, 0.75, False),
        (11, 2.9, True),  # floor(11.6) = 11, exact decimal arithmetic
        (12, 2.9, False),
    ],
)
def test_cpu_total_limit(vcpus, ratio, ok):
    policy = overcommit(cpu={"ratio": ratio})
    value, _ = limit("cpu.total", FACTS, policy)
    assert (usage("cpu.total", {"a": vm(vcpus)}, policy) <= value) is ok


def test_ratio_that_floats_would_round_wrongly():
    policy = overcommit(cpu={"ratio": 0.29})
    assert limit("cpu.total", HostFacts(100, GiB, 0, 0), policy)[0] == 29  # 100 × 0.29 is 28.999… in floats


@pytest.mark.parametrize("count_inactive", [True, False])
def test_count_inactive(count_inactive):
    policy = overcommit(cpu={"countInactive": count_inactive})
    state = {"on": vm(2, "2GiB"), "off": vm(3, "4GiB", active=False)}
    assert usage("cpu.total", state, policy) == (5 if count_inactive else 2)
    assert usage("memory.commit", state, policy) == (6 if count_inactive else 2) * GiB
    assert usage("memory.balloon", state, policy) == 2 * GiB  # only running domains ever


def test_per_domain_defaults_to_host_cpus_and_can_be_set():
    assert limit("cpu.perDomain", FACTS, overcommit()) == (4, "4 host CPUs")
    assert limit("cpu.perDomain", FACTS, overcommit(cpu={"maxVcpusPerDomain": 2}))[0] == 2
    assert usage("cpu.perDomain", {"a": vm(3), "b": vm(5, active=False)}, overcommit()) == 5


@pytest.mark.parametrize(
    ("reserved", "ratio", "expected"),
    [
        ("1GiB", 1.0, 15 * GiB),
        ("0GiB", 1.0, 16 * GiB),
        ("4GiB", 1.5, 18 * GiB),
        ("2GiB", 0.5, 7 * GiB),
        ("32GiB", 1.0, 0),  # reserving more than the host has leaves nothing
    ],
)
def test_memory_commit_limit(reserved, ratio, expected):
    policy = overcommit(memory={"reserved": reserved, "ratio": ratio})
    value, arithmetic = limit("memory.commit", FACTS, policy)
    assert value == expected
    assert arithmetic.startswith(f"(16GiB − {reserved.replace('0GiB', '0B')} reserved) × {ratio:g} = ")


@pytest.mark.parametrize(
    ("count_swap", "count_ksm", "expected_gib"),
    [(False, False, 15), (True, False, 19), (False, True, 17), (True, True, 21)],
)
def test_memory_balloon_credits(count_swap, count_ksm, expected_gib):
    policy = overcommit(memory={"countSwap": count_swap, "countKsm": count_ksm, "ratio": 3.0})
    value, arithmetic = limit("memory.balloon", FACTS, policy)
    assert value == expected_gib * GiB  # the commit ratio never inflates the balloon bound
    assert ("swap" in arithmetic) is count_swap and ("KSM" in arithmetic) is count_ksm


@pytest.mark.parametrize(("current", "ok"), [("15GiB", True), ("15359MiB", True), ("15361MiB", False)])
def test_memory_balloon_at_and_around_the_limit(current, ok):
    policy = overcommit(memory={"ratio": 2.0})
    state = {"a": vm(1, "20GiB", current)}
    value, _ = limit("memory.balloon", FACTS, policy)
    assert (usage("memory.balloon", state, policy) <= value) is ok


def test_capacity_overrides_observed_facts():
    observed = {"cpus": 2, "memory": 4 * GiB, "swap": GiB, "ksm_saved": 0}
    assert host_facts(Capacity(), **observed) == HostFacts(2, 4 * GiB, GiB, 0)
    capacity = Capacity.model_validate({"cpus": 32, "memory": "128GiB", "swap": "0GiB"})
    assert host_facts(capacity, **observed) == HostFacts(32, 128 * GiB, 0, 0)
    assert host_facts(Capacity(), cpus=2, memory=GiB, swap=None, ksm_saved=0).swap == 0


def test_keeping_or_lowering_usage_on_a_violated_host_is_allowed():
    policy = overcommit()
    before = {"big": vm(20), "small": vm(1)}  # 21 vCPUs > 16: violated already
    report = evaluate(policy, FACTS, before, [Action(ActionKind.UNDEFINE, "hv", "small", Phase.UNDEFINE)])
    total = rule(report, "cpu.total")
    assert not total.ok and not total.raised and not report.refused
    per_domain = rule(report, "cpu.perDomain")
    assert not per_domain.ok and not per_domain.raised  # 'big' was already too wide


def test_warn_reports_without_refusing():
    spec = DomainSpec.model_validate({"vcpus": 8, "memory": "1GiB"})
    actions = [Action(ActionKind.DEFINE, "hv", "wide", Phase.DEFINE, spec=spec)]
    report = evaluate(overcommit(enforcement="warn"), FACTS, {}, actions)
    assert [r.rule for r in report.violations] == ["cpu.perDomain"]
    assert not report.refused
    assert rule(report, "cpu.perDomain").message() == (
        "cpu.perDomain: 0 → 8 vCPUs > 4 host CPUs (over the limit: wide +8)"
    )
