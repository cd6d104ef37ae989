"""A host refused during the apply, once the pools its plan makes ran, reads as refused (exit 3 for
``apply``, ``refused`` for the daemon, no retry), not as a failed action."""

from __future__ import annotations

from reconciler.daemon.decision import Reason
from reconciler.daemon.verdict import judge
from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.apply import ActionResult
from reconciler.engine.plan import HostPlan, Plan
from reconciler.engine.reconcile import Outcome

WHY = "refused by policy once the pools ran: storage.commit[images]: 0B → 150GiB > 100GiB"


def results() -> list[ActionResult]:
    pool = Action(ActionKind.POOL, "hv1", "images", Phase.POOL)
    define = Action(ActionKind.DEFINE, "hv1", "web", Phase.DEFINE)
    return [
        ActionResult(pool, True, "defined, started", 0.0),
        ActionResult(define, False, WHY, 0.0, refused=True),
    ]


def test_the_outcome_counts_the_host_refused_not_failed():
    outcome = Outcome(Plan(hosts={"hv1": HostPlan("hv1", "sandbox:x"), "hv2": HostPlan("hv2", "sandbox:y")}))
    outcome.results = {"hv1": results(), "hv2": []}
    assert outcome.refused_hosts == ["hv1"] and not outcome.failed


def test_the_daemon_reads_it_as_refused_and_waits_for_a_new_revision():
    verdict = judge(HostPlan("hv1", "sandbox:x"), results(), Reason.REVISION)
    assert (verdict.result, verdict.message, verdict.retry) == ("refused", WHY, False)
