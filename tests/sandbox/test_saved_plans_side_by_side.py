"""``apply --plan FILE`` works its hosts side by side, as ``apply`` does: opened, locked, observed
and applied at once within ``--host-parallel``, every host re-checked before anything changes, a
host that cannot be reached refusing the whole plan, results shown grouped in the plan's order.

Concurrency is made deterministic with barriers and events on journalled in-memory hosts (a serial
implementation breaks a barrier or misses an event instead of hanging), never with sleeps.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reconciler.engine.apply import Hooks
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.errors import HostError, PermanentHostError, TemporaryHostError
from reconciler.files.keys import signing_key, verifying_key
from reconciler.offline.savedplan import SavedPlan, apply_saved, load_plan, save_plan
from tests.unit.test_sessions import WAIT, Fleet, applied, manifests_for, remote

MACHINES = {"one": "c.example", "two": "a.example", "three": "b.example"}  # key order: two three one


def saved_plan(root: Path, fleet: Fleet, machines: dict[str, str]) -> SavedPlan:
    """A signed plan of the journalled hosts (each to define and start ``web-NAME``), loaded back;
    the journal cleared, so it holds what the apply did only."""
    manifests = manifests_for(root, remote(machines))
    plan = reconcile(manifests, fleet, ReconcileOptions()).plan
    path = root / "plan.json"
    specs = {name: host.spec for name, host in manifests.hosts.items()}
    save_plan(path, plan, specs=specs, key=signing_key())
    fleet.journal.events.clear()
    fleet.journal.threads.clear()
    return load_plan(path, verifying_key)


@pytest.mark.parametrize("method", ["lock", "observe", "define"])
def test_hosts_are_locked_observed_and_applied_side_by_side(tmp_path: Path, method: str):
    """Each host's call waits for the other's: one host at a time breaks the barrier."""
    fleet = Fleet(["a", "b"])
    saved = saved_plan(tmp_path, fleet, {"a": "a.example", "b": "b.example"})
    both = threading.Barrier(2, timeout=WAIT)
    for host in fleet.hosts.values():
        host.hooks[method] = both.wait
    outcome = apply_saved(saved, fleet)
    assert not outcome.failed, outcome.plan.hosts
    assert applied(fleet, "a") and applied(fleet, "b")
    for name in ("a", "b"):
        journal = fleet.journal
        assert journal.index("observe", name) < journal.index("define", "a")  # all checked first
        assert journal.index("observe", name) < journal.index("define", "b")
        assert fleet.hosts[name].defined_while_locked == [True]


def test_results_are_shown_grouped_in_the_plans_order_whoever_finishes_first(tmp_path: Path):
    """``one`` comes first in the plan (last in the lock order): its define begins, then waits until
    ``two`` has defined (two's define waits for one's to begin: no serial order gets through).
    ``two`` finishes first, yet one's results are shown first, then two's, then three's."""
    fleet = Fleet(list(MACHINES))
    saved = saved_plan(tmp_path, fleet, MACHINES)
    one_began, two_defined = threading.Event(), threading.Event()

    def seen(what: str, host: str) -> None:
        if (what, host) == ("define", "one"):
            one_began.set()
        elif (what, host) == ("defined", "two"):
            two_defined.set()

    fleet.journal.on_event = seen
    fleet.hosts["one"].hooks["define"] = lambda: two_defined.wait(WAIT) or pytest.fail("two never defined")
    fleet.hosts["two"].hooks["define"] = lambda: one_began.wait(WAIT) or pytest.fail("one never began")
    plans: list[str] = []
    shown: list[str] = []
    hooks = Hooks(
        on_plan=lambda plan: plans.append(plan.host), on_result=lambda r: shown.append(r.action.host)
    )
    outcome = apply_saved(saved, fleet, hooks=hooks)
    assert not outcome.failed and all(applied(fleet, name) for name in MACHINES)
    assert fleet.journal.index("defined", "two") < fleet.journal.index("defined", "one")
    assert plans == ["one", "two", "three"]
    assert shown == ["one", "one", "two", "two", "three", "three"]
    assert list(outcome.results) == ["one", "two", "three"]


@pytest.mark.parametrize("stage", ["open", "lock", "observe"])
def test_hosts_that_cannot_be_reached_refuse_the_whole_plan_each_named(tmp_path: Path, stage: str):
    """``two`` (first in the lock order) and ``one`` (last) fail; ``three`` is reached, but nothing
    is applied on it, and every host reached is let go. The refusal names both failed hosts."""
    fleet = Fleet(list(MACHINES))
    saved = saved_plan(tmp_path, fleet, MACHINES)
    errors = {"two": PermanentHostError("two", "refused"), "one": TemporaryHostError("one", "no route")}
    for name, error in errors.items():
        if stage == "open":
            fleet.open_errors[name] = error
        else:
            fleet.hosts[name].errors[stage] = error
    with pytest.raises(HostError) as refusal:
        apply_saved(saved, fleet)
    assert str(refusal.value) == "two: refused; one: no route"
    assert isinstance(refusal.value, PermanentHostError)  # the first host's kind of error
    assert fleet.journal.of("define") == [] and not any(host.domains for host in fleet.hosts.values())
    assert "three" in fleet.journal.of("observe")  # reached, observed, then let go untouched
    assert fleet.journal.of("lock").count("three") == fleet.journal.of("unlock").count("three") == 1
    opened = [
        name for kind, name in fleet.journal.events if kind == "open-write" and name not in fleet.open_errors
    ]
    assert sorted(fleet.journal.of("close")) == sorted(opened)


def test_host_parallel_1_works_one_host_at_a_time_in_the_callers_thread(tmp_path: Path):
    fleet = Fleet(list(MACHINES))
    saved = saved_plan(tmp_path, fleet, MACHINES)
    outcome = apply_saved(saved, fleet, host_parallel=1)
    assert not outcome.failed and all(applied(fleet, name) for name in MACHINES)
    assert fleet.journal.threads == {threading.current_thread()}
