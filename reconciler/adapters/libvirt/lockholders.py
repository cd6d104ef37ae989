"""Who holds a host's apply lock and how long to wait for it: the wait and stale limits, the
holder a lock records (machine, pid, since, last renewal) and the polling wait, shared by both kinds of
lock (``hostlock``: a flock on this machine; ``leases``: a lease object inside a remote hypervisor).
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import LockBusyError, PermanentHostError

log = logging.getLogger("virt_reconcile.adapters.hostlock")
WAIT_ENV = "VIRT_RECONCILE_LOCK_WAIT"
STALE_ENV = "VIRT_RECONCILE_LOCK_STALE"


@dataclass(frozen=True)
class LockLimits:
    """How long to wait for a lock, when a silent lease counts as dead, how often to renew one.

    ``stale`` measures silence, not age: the holder renews every ``renew`` seconds however long its
    apply takes, so no apply is ever too long for its lease. Five minutes is ten missed renewals
    (a slow libvirtd or a paused process survives it) and shorter than the wait, so the next apply
    breaks a dead run's lease instead of failing.
    """

    wait: float = 600.0
    stale: float = 300.0
    renew: float = 30.0
    poll: float = 0.1  # first pause between tries; doubles up to poll_max, with jitter
    poll_max: float = 5.0

    @classmethod
    def from_env(cls, host: str) -> LockLimits:
        """The defaults, with ``VIRT_RECONCILE_LOCK_WAIT`` and ``..._STALE`` (seconds) applied."""
        limits = cls()
        for env, field in ((WAIT_ENV, "wait"), (STALE_ENV, "stale")):
            text = os.environ.get(env)
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value < 0:
                raise PermanentHostError(host, f"{env}={text!r} is not a number of seconds")
            if field == "stale" and value == 0:  # every live lease would be broken at once
                raise PermanentHostError(host, f"{env}={text!r}: a lease cannot be stale after 0 seconds")
            limits = replace(limits, **{field: value})
        return replace(limits, renew=min(limits.renew, limits.stale / 4 or limits.renew))


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into it by the holder, read back to name it to whoever waits.

    ``boot`` (the kernel's boot id) and ``pidns`` (the holder's pid namespace) say where ``pid``
    means something: a run there can tell that the holder's process has ended (``ended``).
    """

    hostname: str
    pid: int
    since: float
    renewed: float
    boot: str = ""
    pidns: str = ""

    @classmethod
    def me(cls) -> Holder:
        """This process, now."""
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now, *where_pids_are())

    def text(self) -> str:
        """The machine-readable form stored in the lock file or the lease."""
        where = f" boot={self.boot} pidns={self.pidns}" if self.boot and self.pidns else ""
        return (
            f"virt-reconcile apply: hostname={self.hostname} pid={self.pid} "
            f"since={iso(self.since)} renewed={iso(self.renewed)}{where}"
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """A holder from :meth:`text`; None for anything else (an empty or foreign description)."""
        fields = dict(re.findall(r"(\w+)=(\S+)", text))
        try:
            return cls(
                fields["hostname"],
                int(fields["pid"]),
                datetime.fromisoformat(fields["since"]).timestamp(),
                datetime.fromisoformat(fields["renewed"]).timestamp(),
                fields.get("boot", ""),
                fields.get("pidns", ""),
            )
        except (KeyError, ValueError):
            return None

    def ended(self) -> bool:
        """Whether the holder is a process of this boot of this machine, in this pid namespace,
        that no longer runs (so it holds nothing, though its lease was never removed). A holder
        that did not record where it ran is never taken for ended."""
        if not (self.boot and self.pidns) or (self.boot, self.pidns) != where_pids_are():
            return False
        if self.pid == os.getpid():
            return False  # this process: whether it holds the lease is for the caller to know
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # runs, as another user
        return False

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.hostname} since {iso(self.since)}"


def where_pids_are() -> tuple[str, str]:
    """This machine's boot id and this process's pid namespace (empty when they cannot be read)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "", ""
    return boot, pidns


def iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def describe(text: str) -> str:
    """A lock's recorded holder for a message: parsed when possible, raw (or unknown) otherwise."""
    holder = Holder.parse(text)
    if holder is not None:
        return str(holder)
    return repr(text.strip()) if text.strip() else "an unknown process"


def wait_for(host: str, what: str, attempt: Callable[[], str | None], limits: LockLimits) -> None:
    """Call ``attempt`` until it takes the lock (returns None) or ``limits.wait`` runs out.

    While someone else holds it, ``attempt`` returns a description of the holder; the first one is
    logged, the last one goes into the error.
    """
    deadline = time.monotonic() + limits.wait
    pause = limits.poll
    holder = attempt()
    if holder is None:
        return
    if limits.wait > 0:  # a try without waiting (the first, side by side) says nothing yet
        log.warning("%s: waiting up to %gs for %s, held by %s", host, limits.wait, what, holder)
    while holder is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockBusyError(
                host,
                f"another apply holds {what}: {holder}; gave up after waiting {limits.wait:g}s "
                f"({WAIT_ENV} sets the wait)",
            )
        time.sleep(min(pause * random.uniform(0.8, 1.2), remaining))  # jitter, not security
        pause = min(pause * 2, limits.poll_max)
        holder = attempt()
