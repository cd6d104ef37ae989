"""Host sync windows: when a host's changes may be applied (pure; the clock is a parameter).

Like Argo CD's sync windows: each window opens on a cron schedule (five fields, in its time zone,
UTC by default) and stays open for its duration. Outside every ``allow`` window, when a host has
any, or inside any ``deny`` window, the host's plan is made and shown but not applied: its changes
are deferred, never dropped, and the first pass inside a window applies them. A deny window wins
over an allow window open at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from reconciler.spec.durations import format_duration
from reconciler.spec.fieldtypes import Duration, Model

#: The shortest window: schedules fire on the minute, so a shorter window could miss its pass.
MIN_WINDOW_SECONDS = 60.0
#: The longest window: a yearly schedule open all year round is the most a window can mean.
MAX_WINDOW_SECONDS = 366 * 24 * 3600.0
_MINUTE = timedelta(minutes=1)


class SyncWindow(Model):
    """A period, on a cron schedule, when changes to the host are allowed (or denied)."""

    kind: Literal["allow", "deny"] = Field(
        description="allow: changes are applied only inside the host's allow windows; deny: never "
        "inside this one (a deny window wins over an allow window)."
    )
    schedule: str = Field(
        description="When the window opens: a five-field cron expression (minute hour day month "
        "weekday), e.g. '0 2 * * *' for 02:00 every day, in timeZone.",
        examples=["0 2 * * *", "0 22 * * 1-5"],
    )
    duration: Duration = Field(
        description="How long the window stays open once opened, e.g. 1h; from 1m to 8784h (a year)."
    )
    time_zone: str = Field(
        default="UTC",
        description="IANA time zone the schedule is read in, e.g. Europe/Paris; default UTC.",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        from croniter import croniter

        if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
            raise ValueError(
                f"{schedule!r} is not a five-field cron expression (minute hour day month weekday), "
                "e.g. '0 2 * * *'"
            )
        if _fire(schedule, datetime(2000, 1, 1, tzinfo=UTC), after=True) is None:
            raise ValueError(f"schedule {schedule!r} never fires (a date no month has)")
        return schedule

    @field_validator("duration")
    @classmethod
    def _a_minute_to_a_year(cls, seconds: float) -> float:
        if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(
                f"a sync window lasts from 1m (schedules fire on the minute) to 8784h (a year), "
                f"not {format_duration(seconds)}"
            )
        return seconds

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}; use an IANA name such as Europe/Paris or UTC"
            ) from None
        return name

    def describe(self) -> str:
        """``allow 0 2 * * * for 1h`` (and the time zone when it is not UTC), for messages."""
        zone = "" if self.time_zone == "UTC" else f" ({self.time_zone})"
        return f"{self.kind} {self.schedule} for {format_duration(self.duration)}{zone}"

    def last_opened(self, now: datetime) -> datetime | None:
        """When the window last opened at or before ``now`` (UTC), or None if it never did."""
        zone = ZoneInfo(self.time_zone)
        # The schedule fires on whole minutes: the latest fire strictly before the next minute.
        next_minute = (now.astimezone(UTC).replace(second=0, microsecond=0) + _MINUTE).astimezone(zone)
        return _fire(self.schedule, next_minute, after=False)

    def closes(self, now: datetime) -> datetime | None:
        """When the window open at ``now`` closes (UTC), or None when it is not open."""
        opened = self.last_opened(now)
        if opened is None:
            return None
        end = opened + timedelta(seconds=self.duration)
        return end if opened <= now < end else None

    def next_opens(self, now: datetime) -> datetime | None:
        """When the window next opens after ``now`` (UTC), or None if it never will."""
        return _fire(self.schedule, now.astimezone(ZoneInfo(self.time_zone)), after=True)


def _fire(schedule: str, start: datetime, *, after: bool) -> datetime | None:
    """When ``schedule`` fires first after ``start`` (or last before it), in UTC; None if never.
    croniter is imported here, when a Host has windows: loading manifests without any never pays."""
    from croniter import CroniterBadDateError, croniter

    try:
        fires = croniter(schedule, start)
        when: datetime = fires.get_next(datetime) if after else fires.get_prev(datetime)
    except CroniterBadDateError:
        return None
    return when.astimezone(UTC)


def deferral(windows: Sequence[SyncWindow], now: datetime) -> str:
    """Why a host's changes wait at ``now`` (an aware datetime), or "" when they may be applied."""
    if now.tzinfo is None:
        raise ValueError("sync windows are evaluated at an aware time (with a time zone)")
    denying = [(window, end) for window in windows if window.kind == "deny" and (end := window.closes(now))]
    if denying:
        window, _ = denying[0]
        until = max(end for _, end in denying)
        return f"inside sync window {window.describe()}; closes {_moment(until)}"
    allows = [window for window in windows if window.kind == "allow"]
    if not allows or any(window.closes(now) for window in allows):
        return ""
    named = ", ".join(window.describe() for window in allows)
    openings = [opens for window in allows if (opens := window.next_opens(now)) is not None]
    plural = "s" if len(allows) > 1 else ""
    after = f"; next opens {_moment(min(openings))}" if openings else "; none opens again"
    return f"outside sync window{plural} {named}{after}"


def _moment(when: datetime) -> str:
    """A time in messages: UTC to the minute, ``2026-05-02T02:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
