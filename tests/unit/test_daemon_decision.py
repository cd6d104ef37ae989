"""What a daemon pass does, decided from its triggers alone (reconciler.daemon.decision)."""

from __future__ import annotations

import pytest

from reconciler.daemon.decision import Decision, HostTask, Reason, Trigger, decide, is_idle, needs_fetch

HOSTS = ("hv1", "hv2", "hv3")


def tasks(decision: Decision) -> dict[str, Reason]:
    return {task.host: task.reason for task in decision.tasks}


# --------------------------------------------------------------------------------------- fetching


@pytest.mark.parametrize(
    "batch",
    [
        [(Trigger.START, None)],
        [(Trigger.POLL, None)],
        [(Trigger.WEBHOOK, None)],
        [(Trigger.FILES, None)],
        [(Trigger.RESYNC, None)],
        [(Trigger.RETRY, None)],  # the fetch itself failed: retry it
        [(Trigger.DRIFT, "hv1"), (Trigger.POLL, None)],
    ],
)
def test_every_trigger_but_events_and_host_retries_fetches(batch):
    assert needs_fetch(batch, reconciled="r1")


@pytest.mark.parametrize(
    "batch",
    [
        [(Trigger.DRIFT, "hv1")],
        [(Trigger.RETRY, "hv1"), (Trigger.DRIFT, "hv2")],
        [(Trigger.WINDOW, "hv1")],  # a sync window opened: its deferred changes are at this revision
    ],
)
def test_drift_a_host_retry_and_a_window_opening_reconcile_the_revision_already_there(batch):
    assert not needs_fetch(batch, reconciled="r1")
    assert needs_fetch(batch, reconciled="")  # nothing reconciled yet: fetch first


# -------------------------------------------------------------------------------------- deciding


def test_a_routine_poll_without_a_new_revision_does_nothing():
    batch = [(Trigger.POLL, None), (Trigger.POLL, None)]
    assert is_idle(batch, "r1", "r1")
    assert decide(batch, "r1", "r1", HOSTS) == Decision("r1")


def test_a_new_revision_reconciles_every_host_even_those_with_events():
    decision = decide([(Trigger.POLL, None), (Trigger.DRIFT, "hv2")], "r1", "r2", HOSTS)
    assert decision.revision == "r2"
    assert tasks(decision) == dict.fromkeys(HOSTS, Reason.REVISION)  # none of them counted as drift


def test_the_first_pass_reconciles_every_host_as_a_new_revision():
    assert tasks(decide([(Trigger.START, None)], "", "r1", HOSTS)) == dict.fromkeys(HOSTS, Reason.REVISION)


def test_drift_reconciles_only_the_hosts_it_touched_and_counts_as_drift():
    decision = decide([(Trigger.DRIFT, "hv2"), (Trigger.DRIFT, "hv2")], "r1", "r1", HOSTS)
    assert decision.tasks == (HostTask("hv2", Reason.DRIFT),)


def test_a_host_retry_is_a_retry_not_drift():
    decision = decide([(Trigger.RETRY, "hv1")], "r1", "r1", HOSTS)
    assert decision.tasks == (HostTask("hv1", Reason.RETRY),)


def test_a_window_opening_reconciles_its_host_only_and_says_why():
    decision = decide([(Trigger.WINDOW, "hv2")], "r1", "r1", HOSTS)
    assert decision.tasks == (HostTask("hv2", Reason.WINDOW),)
    assert not is_idle([(Trigger.WINDOW, "hv2")], "r1", "r1")
    both = [(Trigger.WINDOW, "hv2"), (Trigger.DRIFT, "hv2")]
    assert tasks(decide(both, "r1", "r1", HOSTS)) == {"hv2": Reason.DRIFT}


def test_a_host_with_an_event_and_a_retry_is_drift_and_others_keep_their_reason():
    batch = [(Trigger.RETRY, "hv1"), (Trigger.DRIFT, "hv1"), (Trigger.RETRY, "hv3")]
    assert tasks(decide(batch, "r1", "r1", HOSTS)) == {"hv1": Reason.DRIFT, "hv3": Reason.RETRY}


@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        (Trigger.START, Reason.START),
        (Trigger.WEBHOOK, Reason.WEBHOOK),
        (Trigger.FILES, Reason.FILES),
        (Trigger.RESYNC, Reason.RESYNC),
    ],
)
def test_a_full_pass_without_a_new_revision_reconciles_every_host(trigger, reason):
    decision = decide([(trigger, None), (Trigger.DRIFT, "hv3"), (Trigger.RETRY, "hv2")], "r1", "r1", HOSTS)
    assert decision.revision == "r1"
    assert tasks(decision) == {"hv1": reason, "hv2": Reason.RETRY, "hv3": Reason.DRIFT}


def test_a_fetch_retry_reconciles_every_host_but_is_not_a_host_retry():
    assert tasks(decide([(Trigger.RETRY, None)], "r1", "r1", HOSTS)) == dict.fromkeys(
        HOSTS, Reason.FETCH_RETRY
    )


def test_events_and_retries_for_hosts_not_selected_are_ignored():
    batch = [(Trigger.DRIFT, "elsewhere"), (Trigger.RETRY, "gone")]
    assert decide(batch, "r1", "r1", HOSTS).tasks == ()


def test_hosts_keep_the_order_given_and_appear_once():
    decision = decide([(Trigger.RESYNC, None)], "r1", "r1", ("hv3", "hv1", "hv3"))
    assert [task.host for task in decision.tasks] == ["hv3", "hv1"]
