"""Hypothesis: the policy and the apply order hold for random hosts, live states and desired states."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, build_host_plan
from reconciler.engine.policy import HostFacts, evaluate, step, usage
from reconciler.engine.pruning import DeletionRules
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import Domain, DomainSpec, Overcommit, Owner

OWNER = Owner(manifest="m.yaml")
GiB = 1024**3
NAMES = [f"vm{i}" for i in range(6)]


@st.composite
def specs(draw):
    memory = draw(st.integers(min_value=1, max_value=16))
    return DomainSpec.model_validate(
        {
            "vcpus": draw(st.integers(min_value=1, max_value=12)),
            "memory": f"{memory}GiB",
            "currentMemory": f"{draw(st.integers(min_value=1, max_value=memory))}GiB",
            "state": draw(st.sampled_from(["running", "stopped"])),
        }
    )


policies = st.builds(
    lambda cpu_ratio, mem_ratio, reserved, inactive, swap, ksm: Overcommit.model_validate(
        {
            "cpu": {"ratio": cpu_ratio, "countInactive": inactive},
            "memory": {"ratio": mem_ratio, "reserved": f"{reserved}GiB", "countSwap": swap, "countKsm": ksm},
        }
    ),
    st.sampled_from([0.5, 1.0, 1.5, 2.0, 4.0]),
    st.sampled_from([0.5, 1.0, 1.5, 2.0]),
    st.integers(min_value=0, max_value=4),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
facts = st.builds(
    HostFacts,
    cpus=st.integers(min_value=1, max_value=16),
    memory=st.integers(min_value=4, max_value=64).map(lambda g: g * GiB),
    swap=st.integers(min_value=0, max_value=8).map(lambda g: g * GiB),
    ksm_saved=st.integers(min_value=0, max_value=4).map(lambda g: g * GiB),
)
live_states = st.dictionaries(st.sampled_from(NAMES), st.tuples(specs(), st.booleans()), max_size=6)
desired_states = st.dictionaries(st.sampled_from(NAMES), specs(), max_size=6)


def scenario(live, desired, allow_delete):
    observed = HostObservation(
        cpus=1,
        memory=GiB,
        domains=tuple(
            DomainObservation(
                name,
                render_domain(name, spec, OWNER if managed else None),
                active=spec.state == "running",
                autostart=False,
            )
            for name, (spec, managed) in live.items()
        ),
    )
    wanted = {
        name: Domain.model_validate(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Domain",
                "metadata": {"name": name},
                "spec": spec.model_dump(by_alias=True, mode="json"),
            }
        )
        for name, spec in desired.items()
    }
    return build_host_plan(
        DesiredHost("hv", "test:///", wanted, lambda _name: OWNER, DeletionRules(allow=allow_delete)),
        observed,
    )


@given(live_states, desired_states, st.booleans(), policies, facts)
@settings(max_examples=400, deadline=None)
def test_policy_properties(live, desired, allow_delete, policy, host):
    plan = scenario(live, desired, allow_delete)
    report = evaluate(policy, host, plan.before, plan.actions)
    for rule in report.rules:
        # (c) applying in plan order never passes through more than the larger of before and after
        assert rule.peak <= max(rule.before, rule.after), rule
        # (a) a plan that is not refused never turns a passing rule into a failing one
        if not report.refused and rule.before <= rule.limit:
            assert rule.after <= rule.limit, rule
    if report.refused:
        # (b) a refusal names at least one rule, and every named rule got worse
        assert report.violations
        for rule in report.violations:
            if rule.rule == "cpu.perDomain":
                assert rule.contributors, rule
            else:
                assert rule.after > rule.before and rule.after > rule.limit, rule


@given(live_states, desired_states, st.booleans(), policies)
@settings(max_examples=200, deadline=None)
def test_every_intermediate_state_stays_within_before_and_after(live, desired, allow_delete, policy):
    plan = scenario(live, desired, allow_delete)
    state = dict(plan.before)
    states = [state]
    for action in plan.actions:
        state = step(state, action)
        states.append(state)
    for rule in ("cpu.total", "memory.commit", "memory.balloon"):
        used = [usage(rule, s, policy) for s in states]
        assert max(used) <= max(used[0], used[-1]), (rule, used, [(a.kind, a.domain) for a in plan.actions])
    # the simulated end state is what the plan promises for every desired domain it may manage
    for name, spec in desired.items():
        if name in live and not live[name][1]:
            continue  # a conflict with an unmanaged domain: left alone
        claim = state[name]
        assert (claim.vcpus, claim.memory, claim.current_memory, claim.active) == (
            spec.vcpus,
            spec.memory,
            spec.current_memory,
            spec.state == "running",
        )
