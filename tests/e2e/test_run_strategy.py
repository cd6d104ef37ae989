"""Run strategies on a real libvirtd, through the daemon: each way a guest stops (ACPI shutdown from
inside, a destroy by hand, QEMU killed) as libvirt 9.0 reports it, and what each strategy does then.

What libvirt reports was checked on this machine first: ``dom.shutdown()`` (the guest powers off
on ACPI) gives shutoff/shutdown; ``dom.destroy()`` shutoff/destroyed; SIGKILL of the QEMU process
shutoff/crashed. A pass that must leave a guest off is made to happen by editing the manifests (a
note in an annotation, which changes no definition): once the daemon logs that pass, the guest is
checked; nothing here waits for a time to pass.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from tests.daemon_helpers import DaemonProcess
from tests.e2e.conftest import E2E


def wait(predicate: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


class Guest:
    """One e2e guest under a daemon that reads the manifest folder."""

    def __init__(self, e2e: E2E, daemon: DaemonProcess, spec: dict) -> None:
        self.e2e, self.daemon, self.spec, self.notes = e2e, daemon, spec, 0

    @property
    def dom(self) -> libvirt.virDomain:
        return self.e2e.domain("web")

    def write(self, **spec: object) -> None:
        """The manifests with ``spec`` changes, and a new note so the folder always changes."""
        self.spec.update(spec)
        self.notes += 1
        self.e2e.manifests(web=self.spec)
        path = self.e2e.root / "manifests.yaml"
        docs = list(yaml.safe_load_all(path.read_text()))
        docs[1]["metadata"]["annotations"] = {"example.com/note": f"pass {self.notes}"}
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))

    def next_pass(self) -> None:
        """Edit the manifests and wait for the daemon's pass over them (logged as a files/revision pass)."""
        mark = len(self.daemon.log)
        self.write()
        wait(
            lambda: any(
                "local: " in line and "(drift)" not in line and " at " in line
                for line in self.daemon.log[mark:]
            ),
            "a pass over the edited manifests",
        )

    def state(self) -> list[int]:
        return self.dom.state()

    def off_because(self, reason: int) -> None:
        wait(lambda: not self.dom.isActive(), "the guest is off")
        assert self.state() == [libvirt.VIR_DOMAIN_SHUTOFF, reason]

    def power_button(self) -> int:
        """Press the ACPI power button until the guest powers itself off; return the id it ran with.
        Pressed again if need be: just after its ready marker the guest may not listen yet."""
        running = self.dom.ID()
        deadline = time.monotonic() + 90
        while self.dom.isActive() and self.dom.ID() == running:
            assert time.monotonic() < deadline, "the guest never powered off on ACPI"
            with contextlib.suppress(libvirt.libvirtError):  # it may be going off already
                self.dom.shutdown()
            pressed = time.monotonic()
            while self.dom.isActive() and self.dom.ID() == running and time.monotonic() - pressed < 3:
                time.sleep(0.1)
        return running

    def booted(self) -> None:
        assert self.e2e.console_shows("web"), "the guest never booted (it handles ACPI only then)"

    def kill_qemu(self) -> None:
        pid = int(Path(f"/run/libvirt/qemu/{self.dom.name()}.pid").read_text())
        os.kill(pid, signal.SIGKILL)

    def started_again(self, old_id: int, mark: int) -> None:
        """Wait until the daemon has started the guest again (a new instance), and its pass that did
        it (logged after line ``mark``) is over: a destroy during the start would count as failed."""
        wait(lambda: self.dom.isActive() and self.dom.ID() != old_id, "the daemon starts the guest again")
        wait(
            lambda: any("local: applied" in line and " start " in line for line in self.daemon.log[mark:]),
            "the daemon's pass that started it",
        )


@pytest.fixture
def under_daemon(e2e: E2E, tmp_path: Path) -> Iterator[Callable[[dict], Guest]]:
    daemons: list[DaemonProcess] = []

    def start(spec: dict) -> Guest:
        daemon = DaemonProcess(
            "--source",
            str(e2e.root),
            "--interval",
            "1h",
            "--resync",
            "1h",
            "--shutdown-timeout",
            "5",  # halted stops a guest still booting: forced off after 5s (it cannot hear ACPI yet)
            state_dir=tmp_path / "state",
        )
        guest = Guest(e2e, daemon, e2e.guest(**spec))
        guest.write()
        daemons.append(daemon.start())
        daemon.wait_for("local", result="applied", timeout=120)
        return guest

    yield start
    for daemon in daemons:
        assert daemon.terminate() == 0
        daemon.stop()


def test_rerun_on_failure_leaves_a_shutdown_or_destroy_off_and_restarts_a_crash(under_daemon):
    guest = under_daemon({"runStrategy": "rerunOnFailure"})
    assert guest.dom.isActive()  # the first define starts it
    guest.booted()
    guest.power_button()  # ACPI: the guest powers itself off
    guest.off_because(libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
    guest.next_pass()
    assert not guest.dom.isActive(), "a guest that shut itself down stays off"

    guest.dom.create()  # started by hand; then QEMU dies
    running, mark = guest.dom.ID(), len(guest.daemon.log)
    guest.kill_qemu()
    guest.started_again(running, mark)  # shut off (crashed): started again

    guest.dom.destroy()  # an operator pulls the plug on purpose
    assert guest.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
    guest.next_pass()
    assert not guest.dom.isActive(), "a guest destroyed by hand stays off"


def test_manual_leaves_every_stop_alone_always_restarts_any_and_halted_stops_it(under_daemon):
    guest = under_daemon({"runStrategy": "manual"})
    assert guest.dom.isActive()  # the first define starts it when state is running
    running = guest.dom.ID()
    guest.kill_qemu()
    guest.off_because(libvirt.VIR_DOMAIN_SHUTOFF_CRASHED)
    guest.next_pass()
    assert not guest.dom.isActive(), "manual never starts it again, even after a crash"

    mark = len(guest.daemon.log)
    guest.write(runStrategy="always")  # no redefine: the strategy lives only in git
    guest.started_again(running, mark)
    guest.booted()
    mark = len(guest.daemon.log)
    running = guest.power_button()  # the guest shuts itself down: always starts it whatever stopped it
    guest.started_again(running, mark)

    guest.write(runStrategy="halted", state="stopped")
    wait(lambda: not guest.dom.isActive(), "halted stops it")
    guest.dom.create()  # started by hand: stopped again
    wait(lambda: not guest.dom.isActive(), "halted keeps it off")


def test_rerun_on_failure_keeps_a_guest_destroyed_on_purpose_off_once_libvirt_forgot_why(e2e: E2E):
    """libvirt keeps a shut-off reason in memory only: after a libvirtd restart or a host reboot it
    reads unknown. Undefining and defining the same XML makes it forget just so, without restarting
    the libvirtd other tests share; the reason recorded in the ownership keeps the guest off."""
    e2e.manifests(web=e2e.guest(runStrategy="rerunOnFailure"))
    assert e2e.cli("apply").code == 0
    web = e2e.domain("web")
    web.destroy()  # an operator pulls the plug on purpose
    applied = e2e.cli("apply")
    assert applied.code == 0 and "No changes" in applied.out, applied.out  # a record, not a change
    persistent = web.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    assert 'offOnPurpose="destroyed"' in persistent

    web.undefine()
    web = e2e.conn.defineXML(persistent)
    assert web.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN]
    assert e2e.cli("apply").code == 0
    assert not web.isActive(), "a guest destroyed on purpose stays off after libvirt forgot why"

    web.create()  # started by hand: the record goes
    assert e2e.cli("apply").code == 0
    assert "offOnPurpose" not in web.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
