"""A host's slow shrink (a long graceful shutdown) holds up no other host's apply: only the hosts of
a move wait for each other, and results still read host by host in manifest order."""

from __future__ import annotations

import threading
from pathlib import Path

from reconciler.engine.apply import ActionResult, Hooks
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.spec.manifests import load_manifests
from tests.daemon_helpers import FakeHosts
from tests.helpers import domain_yaml, host_yaml, write

WAIT = 10.0  # seconds; never reached when the test passes


def manifests(root: Path, web_state: str) -> None:
    """hv1 holds web (running or stopped as asked), hv2 holds db."""
    documents = [host_yaml("hv1"), host_yaml("hv2", state="state/hv2.xml")]
    documents.append(domain_yaml("web", host="hv1", state=web_state))
    documents.append(domain_yaml("db", host="hv2"))
    write(root, "all.yaml", "---\n".join(documents))


def test_a_slow_stop_on_one_host_delays_no_define_on_another(tmp_path: Path):
    hosts = FakeHosts()
    manifests(tmp_path, "running")
    options = ReconcileOptions(apply=True, host_parallel=2)
    first = reconcile(load_manifests(tmp_path), hosts, options)
    assert not first.failed
    # hv1 now stops web (a shrink, held until released); hv2 gains a new domain meanwhile.
    manifests(tmp_path, "stopped")
    write(tmp_path, "more.yaml", domain_yaml("cache", host="hv2"))
    stopping, release = threading.Event(), threading.Event()
    slow = hosts.host("hv1")
    original_stop = slow.stop

    def stop(name: str, timeout: float):
        stopping.set()
        assert release.wait(WAIT), "the stop was never released"
        return original_stop(name, timeout)

    slow.stop = stop  # type: ignore[method-assign]
    seen: list[ActionResult] = []
    done = threading.Event()

    def run() -> None:
        reconcile(load_manifests(tmp_path), hosts, options, Hooks(on_result=seen.append))
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert stopping.wait(WAIT)
        for _ in range(int(WAIT / 0.01)):
            if "cache" in hosts.host("hv2").domains and hosts.host("hv2").domains["cache"].active:
                break
            threading.Event().wait(0.01)
        assert hosts.host("hv2").domains["cache"].active, "hv2 waited for hv1's shutdown"
        assert not done.is_set()
    finally:
        release.set()
        worker.join(WAIT)
    assert [r.action.host for r in seen] == ["hv1", "hv2", "hv2"], "results grouped in manifest order"
    assert not hosts.host("hv1").domains["web"].active
