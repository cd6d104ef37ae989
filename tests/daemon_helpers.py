"""Run the daemon as a real process against a local bare git repository, and talk to it over HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

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


class DaemonProcess:
    """``python -m reconciler daemon`` in a subprocess, on a free loopback port."""

    def __init__(self, *args: str, secret: bytes | None = None, state_dir: Path) -> None:
        self.secret = secret
        self.state_dir = state_dir
        self.args = args
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
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
            if "listening on " in line:
                self.url = line.rsplit(" ", 1)[1].strip()
                return self
        raise AssertionError(f"the daemon did not start: {self.log}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
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

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
