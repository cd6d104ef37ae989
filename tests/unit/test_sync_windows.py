"""Host syncWindows: when changes may be applied, at fixed times and against a minute-by-minute
reference (hypothesis); validation errors with file, line and field; a deferred host's plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.engine.hypervisor import HostObservation
from reconciler.engine.plan import DesiredHost, build_host_plan
from reconciler.errors import ManifestError
from reconciler.spec.manifests import load_manifests
from reconciler.spec.syncwindows import SyncWindow, deferral
from tests.helpers import domain_model, write

GiB = 1024**3


def window(kind: str = "allow", schedule: str = "0 2 * * *", duration: str = "1h", **more: str) -> SyncWindow:
    return SyncWindow.model_validate({"kind": kind, "schedule": schedule, "duration": duration, **more})


def at(text: str) -> datetime:
    return (
        datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)
    )


# ------------------------------------------------------------------------------- fixed times


def test_no_window_never_defers():
    assert deferral((), at("2026-05-01T12:00")) == ""


def test_outside_an_allow_window_says_which_and_when_it_opens():
    nightly = window()
    assert deferral([nightly], at("2026-05-01T12:00")) == (
        "outside sync window allow 0 2 * * * for 1h; next opens 2026-05-02T02:00Z"
    )
    assert deferral([nightly], at("2026-05-01T02:00")) == ""  # it opens on the minute
    assert deferral([nightly], at("2026-05-01T02:59:59")) == ""
    assert deferral([nightly], at("2026-05-01T03:00")).startswith("outside")  # closed at the end


def test_a_deny_window_wins_and_says_when_it_closes():
    always_open = window(schedule="* * * * *", duration="1m")
    freeze = window("deny", "0 9 * * 1-5", "8h")
    friday = at("2026-05-01T10:30")  # a Friday
    assert deferral([always_open, freeze], friday) == (
        "inside sync window deny 0 9 * * 1-5 for 8h; closes 2026-05-01T17:00Z"
    )
    assert deferral([always_open, freeze], at("2026-05-02T10:30")) == ""  # Saturday


def test_several_allow_windows_name_the_soonest_opening():
    windows = [window(schedule="0 2 * * *"), window(schedule="30 13 * * *", duration="30m")]
    assert deferral(windows, at("2026-05-01T12:00")) == (
        "outside sync windows allow 0 2 * * * for 1h, allow 30 13 * * * for 30m; next opens 2026-05-01T13:30Z"
    )
    assert deferral(windows, at("2026-05-01T13:45")) == ""


def test_a_time_zone_moves_the_window_and_follows_daylight_saving():
    paris = window(schedule="0 2 * * *", timeZone="Europe/Paris")
    assert paris.describe() == "allow 0 2 * * * for 1h (Europe/Paris)"
    assert deferral([paris], at("2026-01-15T01:30")) == ""  # 02:30 in Paris (UTC+1)
    assert deferral([paris], at("2026-07-15T00:30")) == ""  # 02:30 in Paris (UTC+2)
    assert "next opens 2026-07-16T00:00Z" in deferral([paris], at("2026-07-15T01:30"))


def test_a_window_longer_than_its_period_stays_open():
    assert deferral([window(schedule="0 * * * *", duration="2h")], at("2026-05-01T12:34")) == ""


def test_the_clock_must_carry_a_time_zone():
    with pytest.raises(ValueError, match="aware"):
        deferral([window()], datetime(2026, 5, 1, 12, 0))


# ----------------------------------------------------------------------- against a reference


def opened_by_brute_force(schedule: str, duration_minutes: int, now: datetime) -> bool:
    """Whether some minute in (now - duration, now] matches the schedule (UTC)."""
    minute = now.replace(second=0, microsecond=0)
    return any(croniter.match(schedule, minute - timedelta(minutes=back)) for back in range(duration_minutes))


schedules = st.builds(
    lambda minute, hour, weekday: f"{minute} {hour} * * {weekday}",
    st.sampled_from(["0", "15", "*/10", "5,35", "*"]),
    st.sampled_from(["*", "2", "0-6", "*/3", "22"]),
    st.sampled_from(["*", "1-5", "0", "6"]),
)
moments = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(schedule=schedules, minutes=st.integers(1, 180), now=moments)
def test_a_window_is_open_exactly_when_a_minute_reference_says_so(schedule: str, minutes: int, now: datetime):
    allow = window(schedule=schedule, duration=f"{minutes}m")
    assert (deferral([allow], now) == "") == opened_by_brute_force(schedule, minutes, now)
    deny = window("deny", schedule, f"{minutes}m")
    assert (deferral([deny], now) == "") != opened_by_brute_force(schedule, minutes, now)


@settings(max_examples=100, deadline=None)
@given(schedule=schedules, minutes=st.integers(1, 180), now=moments)
def test_the_next_opening_is_after_now_and_opens_the_window(schedule: str, minutes: int, now: datetime):
    allow = window(schedule=schedule, duration=f"{minutes}m")
    opens = allow.next_opens(now)
    assert opens is not None and opens > now
    assert deferral([allow], opens) == ""
    assert croniter.match(schedule, opens)  # an opening is a time the schedule fires
    closed = deferral([allow], now) != ""
    assert not closed or f"next opens {opens:%Y-%m-%dT%H:%M}Z" in deferral([allow], now)


# --------------------------------------------------------------------------------- validation


def host_with(tmp_path: Path, windows: str) -> list[str]:
    write(
        tmp_path,
        "hosts.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\nspec:\n"
        "  uri: sandbox:state/hv1.xml\n  syncWindows:\n" + windows,
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    return [str(problem) for problem in info.value.problems]


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        (
            "  - {kind: allow, schedule: '0 2 * *', duration: 1h}\n",
            "hosts.yaml:7: spec.syncWindows[0].schedule: '0 2 * *' is not a five-field cron expression",
        ),
        (
            "  - {kind: allow, schedule: '0 0 2 * * *', duration: 1h}\n",
            "hosts.yaml:7: spec.syncWindows[0].schedule: '0 0 2 * * *' is not a five-field cron expression",
        ),
        (
            "  - {kind: allow, schedule: '0 0 30 2 *', duration: 1h}\n",
            "hosts.yaml:7: spec.syncWindows[0].schedule: schedule '0 0 30 2 *' never fires",
        ),
        (
            "  - kind: allow\n    schedule: '0 2 * * *'\n    duration: 1h\n    timeZone: Mars/Olympus\n",
            "hosts.yaml:10: spec.syncWindows[0].timeZone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "  - {kind: allow, schedule: '0 2 * * *', duration: 30s}\n",
            "hosts.yaml:7: spec.syncWindows[0].duration: a sync window lasts from 1m",
        ),
        (
            "  - {kind: maybe, schedule: '0 2 * * *', duration: 1h}\n",
            "hosts.yaml:7: spec.syncWindows[0].kind: Input should be 'allow' or 'deny'",
        ),
        (
            "  - {kind: allow, schedule: '0 2 * * *'}\n",
            "hosts.yaml:7: spec.syncWindows[0].duration: required field is missing",
        ),
    ],
)
def test_a_bad_window_names_file_line_and_field(tmp_path: Path, windows: str, expected: str):
    problems = host_with(tmp_path, windows)
    assert any(problem.startswith(expected) for problem in problems), problems


# ----------------------------------------------------------------------------- a deferred plan


def test_a_deferred_host_shows_its_plan_and_applies_nothing():
    desired = DesiredHost(
        "hv1", "test:///", {"web": domain_model("web")}, lambda _name: None, deferred="outside sync window x"
    )
    host = build_host_plan(desired, HostObservation(cpus=8, memory=16 * GiB, domains=()))
    assert [action.kind.value for action in host.actions] == ["define", "start"]
    assert host.deferred == "outside sync window x"
    assert host.blocked and host.paused_because == "outside sync window x"
    assert not (host.errors or host.conflicts or host.refused)
