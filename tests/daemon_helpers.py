"""The daemon under test: as a real process against a local bare git repository (talked to over
HTTP), or in-process over in-memory hosts and a manifest folder whose revision the test sets."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path

from reconciler.engine.hypervisor import DomainObservation, HostObservation, StopOutcome
from reconciler.spec.models import Host
from tests.helpers import REPO

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


class Repo:
    """A bare origin and a work tree that commits and pushes manifests to it."""

    def __init__(self, root: Path) -> None:
        self.origin = root / "origin.git"
        self.work = root / "work"
        git(root, "init", "-q", "--bare", "-b", "main", str(self.origin))
        git(root, "clone", "-q", str(self.origin), str(self.work))
        git(self.work, "checkout", "-q", "-B", "main")

    @property
    def url(self) -> str:
        return f"file://{self.origin}"

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            path = self.work / "manifests" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


#: What the daemon's text log puts before each message: ``2025-01-31T12:00:00.123Z INFO ``.
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ ")


class DaemonProcess:
    """``python -m reconciler daemon`` in a subprocess, on a free loopback port."""

    def __init__(self, *args: str, secret: bytes | None = None, state_dir: Path) -> None:
        self.secret = secret
        self.state_dir = state_dir
        self.args = args
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []  # each line's message, its time and level taken off
        self.raw: list[str] = []  # the lines as the daemon printed them
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> DaemonProcess:
        command = [
            sys.executable,
            "-m",
            "reconciler",
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(self.state_dir),
            *self.args,
        ]
        if self.secret is not None:
            secret_file = self.state_dir.parent / "webhook-secret"
            secret_file.write_bytes(self.secret)
            command += ["--webhook-secret-file", str(secret_file)]
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.lines.get(timeout=30)
            found = re.search(r"listening on (http://[^\s\"]+)", line)  # a text or a JSON line
            if found:
                self.url = found.group(1)
                return self
        raise AssertionError(f"the daemon did not start: {self.log}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line.rstrip())
            self.log.append(LOG_PREFIX.sub("", line.rstrip(), count=1))
            self.lines.put(line)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def status(self) -> dict:
        return json.loads(self.get("/status")[1])

    def webhook(self, body: bytes = b'{"ref": "refs/heads/main"}', signature: str | None = None) -> int:
        if signature is None and self.secret is not None:
            signature = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            self.url + "/hooks/git",
            data=body,
            method="POST",
            headers={"X-Hub-Signature-256": signature or ""},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    def wait_for(self, host: str, timeout: float = 30, **expected: str) -> dict:
        """Poll /status until the host's fields match ``expected``; return that host's status."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            last = self.status()["hosts"].get(host, {})
            if all(last.get(key) == value for key, value in expected.items()):
                return last
            time.sleep(0.05)
        raise AssertionError(f"{host} never reached {expected}; last {last}; log {self.log[-10:]}")

    def wait_for_line(self, start: str, timeout: float = 10) -> str:
        """The first line of the daemon's output that starts with ``start`` (waiting for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.log) if line.startswith(start)), None)
            if found is not None:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no line starting {start!r} in {self.log[-10:]}")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ------------------------------------------------------------------ the daemon in-process (unit tests)


class FakeHypervisor:
    """An in-memory host: domains defined, started and stopped as the engine asks."""

    def __init__(self, name: str, cpus: int = 16, memory: int = 64 << 30) -> None:
        self.name = name
        self.cpus = cpus
        self.memory = memory
        self.domains: dict[str, DomainObservation] = {}
        self.broken: dict[str, Exception] = {}  # method name -> what it raises (once)

    def environment(self, paths, **_asked):
        """Nothing known about networks, bridges or files: the pre-flight checks nothing here."""
        from reconciler.engine.hypervisor import HostEnvironment

        return HostEnvironment(unchecked=("an in-memory test host",))

    def _call(self, method: str) -> None:
        error = self.broken.pop(method, None)
        if error is not None:
            raise error

    def exclusive(self, wait: bool = True) -> contextlib.AbstractContextManager[object]:
        """No other process reaches an in-memory host: nothing to lock."""
        return contextlib.nullcontext()

    def observe(self) -> HostObservation:
        return HostObservation(self.cpus, self.memory, tuple(self.domains.values()))

    def define(self, xml: str) -> None:
        from lxml import etree

        self._call("define")
        name = etree.fromstring(xml.encode()).findtext("name") or ""
        old = self.domains.get(name)
        self.domains[name] = DomainObservation(
            name, xml, bool(old and old.active), bool(old and old.autostart)
        )

    def undefine(self, name: str, *, keep_nvram: bool = False) -> None:
        del self.domains[name]

    def start(self, name: str) -> None:
        self._call("start")
        self.domains[name] = replace(self.domains[name], active=True)

    def stop(self, name: str, timeout: float) -> StopOutcome:
        self.domains[name] = replace(self.domains[name], active=False)
        return StopOutcome.SHUTDOWN

    def set_current_memory(self, name: str, config: int, live: int | None) -> None:
        pass

    def set_autostart(self, name: str, autostart: bool) -> None:
        self.domains[name] = replace(self.domains[name], autostart=autostart)


class FakeHosts:
    """A connector to in-memory hosts; ``fail(name, error, times)`` makes the next connects raise."""

    def __init__(self) -> None:
        self.hypervisors: dict[str, FakeHypervisor] = {}
        self.failures: dict[str, list[Exception]] = {}
        self.connects: list[str] = []
        self.writes: list[str] = []  # connects that may change the host (apply), not read-only looks

    def host(self, name: str) -> FakeHypervisor:
        return self.hypervisors.setdefault(name, FakeHypervisor(name))

    def fail(self, name: str, error: Exception, times: int = 1) -> None:
        self.failures.setdefault(name, []).extend([error] * times)

    def __call__(self, host: Host, write: bool) -> AbstractContextManager[FakeHypervisor]:
        if write:
            self.writes.append(host.name)
        return self._connect(host.name)

    @contextmanager
    def _connect(self, name: str) -> Iterator[FakeHypervisor]:
        self.connects.append(name)
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)
        yield self.host(name)


class FakeSource:
    """A manifest folder whose revision the test sets; ``fail_with`` makes the next update raise."""

    watchable = False

    def __init__(self, manifests: Path, revision: str = "r1") -> None:
        self.manifests = manifests
        self.revision = revision
        self.fail_with: list[Exception] = []
        self.updates = 0
        self.identity = f"dir:{manifests}"

    def update(self) -> str:
        self.updates += 1
        if self.fail_with:
            raise self.fail_with.pop(0)
        return self.revision


def in_process_daemon(
    root: Path, hosts: tuple[str, ...] = ("hv1",), domains: tuple[str, ...] = ("web",), **settings: object
):
    """A Daemon (not running: call ``settle``, or ``run`` it in a thread) over in-memory hosts
    and a FakeSource; ``settings`` are more DaemonConfig fields (a short backoff, a load timeout...)."""
    from reconciler.daemon import Daemon, DaemonConfig
    from tests.helpers import domain_yaml, host_yaml

    manifests = root / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    documents = [host_yaml(name, state=f"state/{name}.xml") for name in hosts]
    documents += [domain_yaml(f"{domain}-{name}", host=name) for name in hosts for domain in domains]
    (manifests / "all.yaml").write_text("---\n".join(documents))
    source, connect = FakeSource(manifests), FakeHosts()
    config = DaemonConfig(state_dir=root / "state", listen=("127.0.0.1", 0), **settings)
    daemon = Daemon(config, source, connect)
    return daemon, source, connect


def settle(daemon, batch) -> None:
    """One pass of ``batch``, and every host lane it fed run to its end (as the loop's next pass
    would find it)."""
    daemon.reconcile_pass(batch)
    assert daemon.lanes.wait_idle(30), "a host lane did not finish within 30 s"


def retry_timers() -> set[threading.Timer]:
    """The retry timers alive in this process (not pytest-timeout's own timer, for one)."""
    from reconciler.daemon.retries import Retries

    return {
        t
        for t in threading.enumerate()
        if isinstance(t, threading.Timer)
        and t.is_alive()
        and isinstance(getattr(t.function, "__self__", None), Retries)
    }


# ------------------------------------------------------------------ raw HTTP, as a hostile peer sends it


def raw_request(
    address: tuple[str, int], data: bytes, *, timeout: float = 5.0, close_write: bool = True
) -> bytes:
    """Send ``data`` as it is on a new connection, then read until the server closes; the bytes read.

    ``close_write`` ends the sending side after ``data`` (the server sees the end of the request).
    """
    import socket

    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may have answered and closed before taking everything
        chunks: list[bytes] = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def status_code(response: bytes) -> int:
    """The status code of a raw HTTP response (after any ``100 Continue``); 0 when there is none."""
    import re

    codes = re.findall(rb"^HTTP/1\.[01] (\d{3}) ", response, re.MULTILINE)
    finals = [int(code) for code in codes if code != b"100"]
    return finals[-1] if finals else 0


def process_status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (``VmRSS``, ``Threads``...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def rss_kib(pid: int) -> int:
    """A process's resident memory in KiB."""
    return int(process_status(pid)["VmRSS"].split()[0])


def thread_count(pid: int) -> int:
    """A process's threads."""
    return int(process_status(pid)["Threads"])
