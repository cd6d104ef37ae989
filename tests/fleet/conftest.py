"""The fleet tier: many real libvirtd daemons on this machine (tests/fleetlab.py), each a hypervisor
serving libvirt's test driver, reached through latency proxies, plus hosts that hang.

Without root the tier skips with one reason (the lab starts daemons as another user); as root a lab
that cannot start is a failure, since ``make test-fleet`` installs what it needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.fleetlab import ALLOW_SOCKET_ENV, FleetLab, LabError


def _unavailable(reason: str) -> None:
    """Fail as root (the tier must run there), skip otherwise."""
    if os.geteuid() == 0:
        pytest.fail(f"{reason}; as root the fleet tier must run (make test-fleet sets it up)")
    pytest.skip(f"{reason} (run make test-fleet as root)")


@pytest.fixture(autouse=True)
def _root_only() -> None:
    """Every fleet test needs the lab, and the lab needs root."""
    if os.geteuid() != 0:
        pytest.skip("the fleet tier starts libvirtd daemons as another user: it needs root")


@pytest.fixture(autouse=True)
def _lab_uris_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's Host URIs name a socket, which only the operator may allow (here: the environment,
    seen by in-process runs and by CLI subprocesses alike)."""
    for name, value in ALLOW_SOCKET_ENV.items():
        monkeypatch.setenv(name, value)


LabFactory = Callable[..., FleetLab]


@pytest.fixture
def make_lab() -> Iterator[LabFactory]:
    """Start a lab: ``make_lab(hosts=5, latency_ms=20)``; every lab started is closed at the end."""
    labs: list[FleetLab] = []

    def start(hosts: int = 3, latency_ms: float = 0.0) -> FleetLab:
        lab = FleetLab(hosts=hosts, latency_ms=latency_ms)
        try:
            lab.start()
        except LabError as err:
            _unavailable(f"the fleet lab could not start: {err}")
        labs.append(lab)
        return lab

    yield start
    for lab in labs:
        lab.close()
