"""The storage rules: ``storage.commit[P]`` and ``storage.free[P]`` per pool, at, under and over their
limits, with the same refusal semantics, report and plan output as the CPU and memory rules."""

from __future__ import annotations

import io

import pytest

from reconciler.daemon.dashboard import render as render_dashboard
from reconciler.daemon.status import policy_rows
from reconciler.engine.actions import Action, ActionKind, Phase, VolumeChange
from reconciler.engine.hypervisor import HostObservation, PoolObservation, VolumeObservation
from reconciler.engine.plan import DesiredHost, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy, storage_rules
from reconciler.report.json_doc import plan_document
from reconciler.report.markdown import render_markdown
from reconciler.report.printer import Printer
from reconciler.report.text import render_text
from reconciler.spec.models import Capacity, Overcommit, Owner
from reconciler.spec.storage import Pool

GiB = 1024**3


def pool(name: str = "images", capacity: int = 100, used: int = 10, volumes=()) -> PoolObservation:
    """A running dir pool of ``capacity`` GiB, ``used`` GiB allocated, holding ``volumes`` (GiB each)."""
    return PoolObservation(
        name=name,
        type="dir",
        target=f"/srv/{name}",
        active=True,
        autostart=True,
        capacity=capacity * GiB,
        allocation=used * GiB,
        available=(capacity - used) * GiB,
        volumes=tuple(
            VolumeObservation(f"v{i}.qcow2", f"/srv/{name}/v{i}.qcow2", size * GiB, GiB)
            for i, size in enumerate(volumes)
        ),
    )


def create(domain: str, size: int, allocation: int = 0, pool_name: str = "images", mode: str = "backing"):
    change = VolumeChange(pool_name, f"{domain}.qcow2", size * GiB, 0, allocation * GiB, "/base.qcow2", mode)
    return Action(ActionKind.CREATE_VOLUME, "hv1", domain, Phase.CREATE_VOLUME, volume=change)


def resize(domain: str, before: int, after: int, allocation: int = 0):
    change = VolumeChange("images", f"{domain}.qcow2", after * GiB, before * GiB, allocation * GiB)
    return Action(ActionKind.RESIZE_VOLUME, "hv1", domain, Phase.VOLUME_GROW, volume=change)


def delete(domain: str, size: int):
    change = VolumeChange("images", f"{domain}.qcow2", 0, size * GiB)
    return Action(ActionKind.DELETE_VOLUME, "hv1", domain, Phase.DELETE_VOLUME, volume=change)


def rules(observed, actions, ratio=1.0, name="images"):
    found, unchecked = storage_rules(observed, {name: ratio}, actions)
    return {rule.rule: rule for rule in found}, unchecked


@pytest.mark.parametrize(
    ("size", "ratio", "raised"),
    [
        (60, 1.0, False),  # 40 + 60 = 100: at the limit
        (61, 1.0, True),  # just over
        (160, 2.0, False),  # 200 at 100 GiB × 2
        (161, 2.0, True),
        (35, 0.75, False),  # 75 at 100 GiB × 0.75
        (36, 0.75, True),
    ],
)
def test_storage_commit_limit(size, ratio, raised):
    found, _ = rules([pool(volumes=(30, 10))], [create("web", size)], ratio)
    commit = found["storage.commit[images]"]
    assert commit.before == 40 * GiB and commit.after == (40 + size) * GiB
    assert commit.limit == int(100 * GiB * ratio)
    assert commit.raised is raised and commit.ok is not raised


def test_storage_commit_message_names_the_arithmetic_and_who_adds_most():
    actions = [create("web", 50), create("db", 30), resize("old", 10, 15)]
    found, _ = rules([pool(volumes=(10, 10))], actions, 0.5)
    commit = found["storage.commit[images]"]
    assert commit.message() == (
        "storage.commit[images]: 20GiB → 105GiB > 100GiB pool capacity × 0.5 = 50GiB "
        "(adding most: web +50GiB, db +30GiB, old +5GiB)"
    )


def test_a_plan_that_lowers_an_overcommitted_pool_is_allowed():
    found, _ = rules([pool(volumes=(80, 40))], [delete("gone", 40), create("web", 10)])
    commit = found["storage.commit[images]"]
    assert (commit.before, commit.after, commit.peak) == (120 * GiB, 90 * GiB, 120 * GiB)
    assert not commit.raised and commit.ok
    still, _ = rules([pool(volumes=(80, 40))], [delete("gone", 40), create("web", 50)])
    assert still["storage.commit[images]"].raised  # 120 → 130 over 100: raised again


def test_raising_an_already_broken_pool_is_refused():
    found, _ = rules([pool(volumes=(80, 40))], [create("web", 1)])
    assert found["storage.commit[images]"].raised


@pytest.mark.parametrize(
    ("allocations", "raised"),
    [
        ((90,), False),  # a clone of all that is free: fits exactly
        ((91,), True),
        ((50, 41), True),  # two clones together do not fit
        ((0, 0, 0), False),  # overlays allocate almost nothing
    ],
)
def test_storage_free_counts_what_new_volumes_allocate_now(allocations, raised):
    actions = [create(f"vm{i}", 100, amount, mode="clone") for i, amount in enumerate(allocations)]
    found, _ = rules([pool(capacity=100, used=10)], actions, ratio=10.0)
    free = found["storage.free[images]"]
    assert free.before == 10 * GiB and free.after == (10 + sum(allocations)) * GiB
    assert free.limit == 100 * GiB and free.raised is raised
    assert free.arithmetic == "10GiB in use + 90GiB free on the pool's filesystem = 100GiB"


def test_storage_free_counts_growth_that_allocates_and_not_space_a_delete_frees():
    actions = [delete("old", 50), resize("raw", 10, 60, allocation=50), resize("thin", 10, 60)]
    found, _ = rules([pool(capacity=100, used=60, volumes=(50, 10, 10))], actions, ratio=2.0)
    free = found["storage.free[images]"]
    assert (free.before, free.after, free.limit) == (60 * GiB, 110 * GiB, 100 * GiB)
    assert free.raised and free.contributors == (("raw", 50 * GiB),)


def test_volumes_of_other_pools_do_not_count():
    found, _ = rules([pool(), pool("other")], [create("web", 500, pool_name="other")])
    assert found["storage.commit[images]"].after == 0 and not found["storage.commit[images]"].raised
    assert "storage.commit[other]" not in found  # no Pool manifest names it: not judged


@pytest.mark.parametrize(
    ("observed", "why"),
    [([], "does not exist yet"), ([pool(capacity=0, used=0)], "")],
)
def test_a_pool_that_does_not_run_yet_is_unchecked(observed, why):
    inactive = [PoolObservation("images", "dir", "/srv/images", False, False, 0, 0, 0)]
    found, unchecked = rules(observed if why else inactive, [create("web", 500)])
    assert found == {}
    [note] = unchecked
    assert note.startswith("storage.commit[images], storage.free[images]: not checked: the pool ")
    assert (why or "is not running") in note


# --------------------------------------------------------------------------- through the plan


def desired(pools: dict[str, float], enforcement: str = "enforce") -> DesiredHost:
    overcommit = Overcommit.model_validate({"enforcement": enforcement})
    manifests = {
        name: Pool.model_validate(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Pool",
                "metadata": {"name": name},
                "spec": {"type": "dir", "path": f"/srv/{name}", "overcommit": {"ratio": ratio}},
            }
        )
        for name, ratio in pools.items()
    }
    return DesiredHost(
        name="hv1",
        uri="sandbox:x",
        domains={},
        owner_of=lambda _n: Owner(),
        policy=HostPolicy(Capacity(), overcommit, pools),
        pools=manifests,
    )


def judged(observed: list[PoolObservation], actions: list[Action], **options) -> Plan:
    """A host plan (its pool actions, its verdict) with ``actions`` judged as if the plan made them."""
    host = desired({"images": 1.0, "scratch": 1.0}, **options)
    base = build_host_plan(host, HostObservation(cpus=4, memory=16 * GiB, domains=(), pools=tuple(observed)))
    assert host.policy is not None
    report = host.policy.judge(base.observed, base.before, [*base.actions, *actions])
    from dataclasses import replace

    return Plan(hosts={"hv1": replace(base, actions=(*base.actions, *actions), policy=report)})


def test_a_refusal_reads_like_the_cpu_and_memory_ones_in_every_format():
    plan = judged([pool(volumes=(90,))], [create("web", 20)])
    host = plan.hosts["hv1"]
    assert host.refused and host.blocked
    out = io.StringIO()
    render_text(plan, Printer(out, color=False))
    text = out.getvalue()
    assert "storage.commit[images] 90GiB→110GiB/100GiB ✗" in text
    assert (
        "✗ refused by policy: storage.commit[images]: 90GiB → 110GiB > 100GiB pool capacity × 1 = 100GiB "
        "(adding most: web +20GiB)" in text
    )
    assert "policy: storage.commit[scratch], storage.free[scratch]: not checked: the pool does not" in text
    document = plan_document(plan)["hosts"]["hv1"]
    commit = document["policy"]["storage.commit[images]"]
    assert (commit["before"], commit["after"], commit["limit"], commit["unit"]) == (
        90 * GiB,
        110 * GiB,
        100 * GiB,
        "bytes",
    )
    assert commit["raised"] is True and document["refused"] is True
    assert document["violations"][0].startswith("storage.commit[images]: 90GiB → 110GiB")
    markdown = render_markdown(plan)
    row = "| storage.commit[images\\] | 90GiB | 110GiB | 100GiB pool capacity × 1 = 100GiB | ❌ |"
    assert row in markdown
    assert "> ⚠️ storage.commit[scratch" in markdown and "not checked: the pool does not exist yet" in markdown


def test_a_plan_that_defines_a_pool_says_its_rules_are_unchecked():
    host = build_host_plan(desired({"images": 2.0}), HostObservation(cpus=4, memory=16 * GiB, domains=()))
    assert [a.kind for a in host.actions] == [ActionKind.POOL]
    assert host.policy is not None and not host.refused
    assert any("storage.commit[images]" in note and "does not exist yet" in note for note in host.unchecked)
    assert plan_document(Plan(hosts={"hv1": host}))["hosts"]["hv1"]["unchecked"] == list(host.unchecked)


def test_warn_enforcement_reports_and_still_applies():
    plan = judged([pool(volumes=(90,))], [create("web", 20)], enforcement="warn")
    host = plan.hosts["hv1"]
    assert not host.refused and host.policy is not None and host.policy.violations


def test_status_rows_and_dashboard_bars_show_storage_in_bytes():
    plan = judged([pool(volumes=(40,)), pool("scratch", volumes=(1,))], [create("web", 20)])
    rows = {row["rule"]: row for row in policy_rows(plan.hosts["hv1"], applied=False)}
    commit = rows["storage.commit[images]"]
    assert (commit["unit"], commit["usage"], commit["planned"], commit["limit"]) == (
        "bytes",
        40 * GiB,
        60 * GiB,
        100 * GiB,
    )
    html = render_dashboard(
        {"hosts": {"hv1": {"result": "planned", "policy": list(rows.values()), "domains": {}}}}
    ).decode()
    assert 'data-rule="storage.commit[images]"' in html and "40GiB / 100GiB" in html
    assert 'data-rule="storage.free[scratch]"' in html
