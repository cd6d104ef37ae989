"""A crash between two actions is recovered by the next apply; two processes never interleave."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from reconciler.adapters import sandbox
from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli


class Crash(BaseException):
    """Stands for the process dying: not an error the reconciler handles."""


class CrashAfter:
    """A Hypervisor that passes calls to the real one and dies after ``limit`` changes."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit, self.name = inner, limit, inner.name

    def exclusive(self, wait=True):  # the lock is not a change either
        return self.inner.exclusive(wait)

    def observe(self):
        return self.inner.observe()

    def environment(self, paths, **asked):  # a question, not a change: never the one that crashes
        return self.inner.environment(paths, **asked)

    def __getattr__(self, method):
        def call(*args):
            if self.limit == 0:
                raise Crash(method)
            self.limit -= 1
            return getattr(self.inner, method)(*args)

        return call


def crashing_connector(limit: int):
    @contextmanager
    def connect(host, write):
        with libvirt_host.connect(host, write=write) as real:
            yield CrashAfter(real, limit)

    return connect


def test_crash_between_two_actions_is_recovered_by_the_next_apply(sandbox):
    sandbox.domains(a={}, b={}, c={"state": "stopped"})
    with pytest.raises(Crash):
        reconcile(load_manifests(sandbox.root), crashing_connector(2), ReconcileOptions(apply=True))
    assert set(sandbox.view()) == {"a", "b"}, "the two defines done before the crash are kept"
    assert not any(d.active for d in sandbox.view().values())
    recovered = cli("apply", str(sandbox.root))
    assert recovered.code == 0, recovered.out + recovered.err
    assert "define c" in recovered.out and "define a" not in recovered.out
    view = sandbox.view()
    assert view["a"].active and view["b"].active and not view["c"].active
    assert cli("plan", str(sandbox.root)).code == 0


def test_crash_mid_update_is_recovered(sandbox):
    sandbox.domains(a={"vcpus": 1}, b={"vcpus": 1})
    cli("apply", str(sandbox.root))
    sandbox.domains(a={"vcpus": 2, "currentMemory": "512MiB"}, b={"vcpus": 2})
    with pytest.raises(Crash):
        reconcile(load_manifests(sandbox.root), crashing_connector(1), ReconcileOptions(apply=True))
    assert cli("apply", str(sandbox.root)).code == 0
    view = sandbox.view()
    assert (view["a"].vcpus, view["a"].current_kib, view["b"].vcpus) == (2, 512 * 1024, 2)
    assert cli("plan", str(sandbox.root)).code == 0


def test_a_second_apply_waits_for_the_first(sandbox):
    sandbox.domains(a={})
    sandbox.state.parent.mkdir(parents=True)
    results = []
    with sandbox_lock(sandbox.state):
        worker = threading.Thread(target=lambda: results.append(cli("apply", str(sandbox.root)).code))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive(), "apply must wait for the lock"
        assert not sandbox.state.exists()
    worker.join(timeout=30)
    assert results == [0]
    assert sandbox.view()["a"].active


def sandbox_lock(path):
    return sandbox.locked(path, write=True)
