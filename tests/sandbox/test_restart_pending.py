"""Pending restarts on sandbox hosts (libvirt's test driver, reloaded from its state file at every
run): an update applied to a running domain waits for its restart, every later plan says so, and
``apply --restart-pending`` restarts such domains, ``--max-unavailable`` of a host at a time."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.cli.main import main
from reconciler.engine.actions import ActionKind
from reconciler.engine.apply import ActionResult, ApplySettings, Hooks
from reconciler.engine.hypervisor import Hypervisor, StopOutcome
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.errors import PermanentHostError
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli

WAIT = 10.0  # seconds; never reached when the test passes
WEB_LOWERED = "vcpus 2 → 1"


def pending(sandbox: Any, code: int = 0) -> dict[str, list[str]]:
    """Each host's pending restarts, from the JSON plan (which exits 0 for them alone)."""
    run = cli("plan", str(sandbox.root), "--format", "json")
    assert run.code == code, run.out + run.err
    return {name: host["pendingRestarts"] for name, host in json.loads(run.out)["hosts"].items()}


def lowered_while_running(sandbox: Any, *names: str) -> None:
    """``names`` run with 2 vCPUs; git lowers them to 1 and the update is applied while they run."""
    sandbox.domains(**{name: {"vcpus": 2} for name in names})
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains(**{name: {"vcpus": 1} for name in names})
    applied = cli("apply", str(sandbox.root))
    assert applied.code == 0 and "takes effect at the next restart" in applied.out, applied.out


def test_a_pending_restart_is_shown_until_apply_restart_pending_restarts_it(sandbox):
    lowered_while_running(sandbox, "web")
    shown = cli("plan", str(sandbox.root))
    assert shown.code == 0, shown.out  # nothing to apply: the definition already matches git
    assert f"⟳ pending restart web: {WEB_LOWERED}" in shown.out
    assert "1 domain(s) waiting for a restart (apply --restart-pending)" in shown.out
    markdown = cli("plan", str(sandbox.root), "--format", "markdown")
    assert f"**Pending restart** `web`: {WEB_LOWERED}" in markdown.out
    assert pending(sandbox) == {"hv1": ["web"]}, "the running instance's id outlives the reload"
    assert cli("apply", str(sandbox.root)).code == 0 and pending(sandbox) == {"hv1": ["web"]}

    restarted = cli("apply", str(sandbox.root), "--restart-pending")
    assert restarted.code == 0, restarted.out + restarted.err
    assert f"⟳ restart web  ({WEB_LOWERED}): shut down gracefully, started again" in restarted.out
    assert pending(sandbox) == {"hv1": []}
    view = sandbox.view()["web"]
    assert view.active and view.vcpus == 1
    again = cli("apply", str(sandbox.root), "--restart-pending")
    assert again.code == 0 and "No changes: every host matches the manifests." in again.out


def test_a_shutdown_and_start_by_hand_ends_the_wait(sandbox):
    lowered_while_running(sandbox, "web")
    [host] = load_manifests(sandbox.root).hosts.values()
    with libvirt_host.connect(host, write=True) as hypervisor:
        assert hypervisor.stop("web", 5.0) is StopOutcome.SHUTDOWN
        hypervisor.start("web")
    assert pending(sandbox) == {"hv1": []}


def test_a_refused_host_restarts_nothing(sandbox):
    lowered_while_running(sandbox, "web")
    sandbox.domains(web={"vcpus": 1}, big={"vcpus": 17})  # more vCPUs than the host's 16 CPUs
    refused = cli("apply", str(sandbox.root), "--restart-pending")
    assert refused.code == 3, refused.out
    assert "⟳ restart web" in refused.out and "started again" not in refused.out
    assert "big" not in sandbox.view()
    sandbox.domains(web={"vcpus": 1})
    assert pending(sandbox) == {"hv1": ["web"]}


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_max_unavailable_is_a_usage_error(sandbox, value, capsys):
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, before anything is done
        main(["apply", str(sandbox.root), "--restart-pending", "--max-unavailable", value])
    assert usage.value.code == 2 and "argument --max-unavailable" in capsys.readouterr().err
    assert not sandbox.state.exists()


def test_restart_pending_does_not_go_with_a_saved_plan(sandbox, tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["apply", str(sandbox.root), "--plan", str(tmp_path / "plan.json"), "--restart-pending"])
    assert usage.value.code == 2
    assert "argument --restart-pending: not allowed with argument --plan" in capsys.readouterr().err


class Watched:
    """A real sandbox host whose restarts are counted while in flight: from the stop that begins
    one to the start that ends it. With ``together``, each stop waits until that many are under way."""

    def __init__(
        self, inner: Hypervisor, together: int = 0, failing: str = "", failed: threading.Event | None = None
    ) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._together = threading.Barrier(together) if together else None
        self._failing = failing
        self._failed = failed  # the others' stops wait until the failing restart is reported
        self.in_flight = 0
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def stop(self, name: str, timeout: float) -> StopOutcome:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        if self._together is not None:
            self._together.wait(WAIT)  # broken (an error) unless enough restarts run at once
        if self._failed is not None and name != self._failing:
            assert self._failed.wait(WAIT)
        return self._inner.stop(name, timeout)

    def start(self, name: str) -> None:
        try:
            if name == self._failing:
                raise PermanentHostError("hv1", f"start {name!r}: refused")
            self._inner.start(name)
        finally:
            with self._lock:
                self.in_flight -= 1


def restart_all(
    sandbox: Any, watched: list[Watched], settings: ApplySettings, **kwargs: Any
) -> list[ActionResult]:
    """``apply --restart-pending`` in-process, through a watched connection to the sandbox."""

    @contextmanager
    def connect(host: Any, write: bool) -> Iterator[Watched]:
        with libvirt_host.connect(host, write=write) as hypervisor:
            watched.append(Watched(hypervisor, **kwargs))
            yield watched[-1]

    results: list[ActionResult] = []
    failed = kwargs.get("failed")

    def seen(result: ActionResult) -> None:
        results.append(result)
        if failed is not None and not result.ok:
            failed.set()

    options = ReconcileOptions(apply=True, restart_pending=True, settings=settings)
    reconcile(load_manifests(sandbox.root), connect, options, Hooks(on_result=seen))
    return results


NAMES = ("a1", "a2", "a3", "a4")


def test_one_domain_of_a_host_restarts_at_a_time_by_default(sandbox):
    lowered_while_running(sandbox, *NAMES)
    watched: list[Watched] = []
    results = restart_all(sandbox, watched, ApplySettings(workers=8))
    assert sorted(r.action.domain for r in results if r.ok) == list(NAMES)
    assert watched[0].most == 1
    assert pending(sandbox) == {"hv1": []}


def test_max_unavailable_restarts_that_many_at_once_and_no_more(sandbox):
    lowered_while_running(sandbox, *NAMES)
    watched: list[Watched] = []
    results = restart_all(sandbox, watched, ApplySettings(workers=8, max_unavailable=2), together=2)
    assert sorted(r.action.domain for r in results if r.ok) == list(NAMES)
    assert watched[0].most == 2


def test_a_domain_that_does_not_come_back_halts_the_restarts(sandbox):
    lowered_while_running(sandbox, *NAMES)
    watched: list[Watched] = []
    results = restart_all(sandbox, watched, ApplySettings(), failing="a1")
    assert [(r.action.kind, r.action.domain, r.ok) for r in results] == [(ActionKind.RESTART, "a1", False)]
    assert pending(sandbox, code=2) == {"hv1": ["a2", "a3", "a4"]}  # and a1 is to start (a change)
    assert not sandbox.view()["a1"].active  # shut down, then its start was refused


def test_a_failed_restart_begins_no_other_while_others_finish(sandbox):
    lowered_while_running(sandbox, *NAMES)
    watched: list[Watched] = []
    failed = threading.Event()
    settings = ApplySettings(max_unavailable=2)
    results = restart_all(sandbox, watched, settings, together=2, failing="a1", failed=failed)
    assert sorted((r.action.domain, r.ok) for r in results) == [("a1", False), ("a2", True)]
    assert pending(sandbox, code=2) == {"hv1": ["a3", "a4"]}


def running_id(sandbox: Any, name: str) -> int:
    """The instance id the sandbox's state file gives running ``name``."""
    found = re.search(rf"<sandbox:running [^>]*domain=\"{name}\" instance='(\d+)'", sandbox.state.read_text())
    assert found is not None, f"{name} does not run"
    return int(found.group(1))


def test_ids_that_repeat_after_a_reboot_keep_no_restart_pending(sandbox):
    lowered_while_running(sandbox, "web")
    marked = running_id(sandbox, "web")
    assert f'restartInstance="{marked}"' in sandbox.view()["web"].xml
    assert re.search(r"domain=\"web\" instance='\d+' definition=\"[0-9a-f]{16}\"", sandbox.state.read_text())
    [host] = load_manifests(sandbox.root).hosts.values()
    with libvirt_host.connect(host, write=True) as hypervisor:
        assert hypervisor.stop("web", 5.0) is StopOutcome.SHUTDOWN
    # The host reboots: ids start over, and web is started again with the id the mark recorded.
    text = sandbox.state.read_text()
    sandbox.state.write_text(re.sub(r"(<sandbox:instances [^>]*next=)'\d+'", rf"\g<1>'{marked}'", text))
    with libvirt_host.connect(host, write=True) as hypervisor:
        hypervisor.start("web")
    assert running_id(sandbox, "web") == marked
    assert pending(sandbox) == {"hv1": []}, "web runs its new definition: nothing waits"
    assert sandbox.view()["web"].vcpus == 1


def test_max_unavailable_is_not_capped_by_parallel(sandbox):
    lowered_while_running(sandbox, *NAMES)
    watched: list[Watched] = []
    results = restart_all(sandbox, watched, ApplySettings(workers=1, max_unavailable=2), together=2)
    assert sorted(r.action.domain for r in results if r.ok) == list(NAMES)
    assert watched[0].most == 2
