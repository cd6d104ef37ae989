"""Signed revisions and history rewrites: what the daemon's git source lets through.

Real signatures, made and checked by git itself: SSH keys from ``ssh-keygen`` (an allowed-signers
file says which are trusted) and a GnuPG key (a keyring says so). The clone the daemon follows is
tested on its own first (:class:`GitCheckout`), then the daemon as a process over a sandbox host:
what is refused is never applied, shows in ``/status`` and the log, and the last good revision stays
checked out and applied.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from git import Repo as GitRepo

from reconciler.adapters.gitsource import GitCheckout, TrustedKeys, keys_format
from reconciler.errors import RevisionRefusedError, SourceCheckError
from tests.daemon_helpers import GIT_ENV, DaemonProcess, Repo, git
from tests.helpers import REPO, domain_yaml

#: The sandbox host's manifest: its state file inside the manifest tree (the daemon's checkout).
HOST = (
    "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\n"
    "spec:\n  uri: sandbox:state/hv1.xml\n  capacity: {cpus: 8, memory: 16GiB}\n"
)


def sandbox_state(tmp_path: Path) -> Path:
    """Where the daemon's sandbox host keeps its state (untracked, in the checkout)."""
    return tmp_path / "state" / "checkout" / "manifests" / "state" / "hv1.xml"


class Keys:
    """Two SSH signing keys, ``trusted`` and ``stranger``, and an allowed-signers file listing only
    the first."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("ssh-keygen") is None:
            pytest.fail("ssh-keygen is missing: install openssh-client (make system-packages)")
        folder.mkdir()
        self.trusted, self.stranger = folder / "trusted", folder / "stranger"
        for key in (self.trusted, self.stranger):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)], check=True
            )
        kind, blob = self.trusted.with_suffix(".pub").read_text().split()[:2]
        self.allowed = folder / "allowed_signers"
        self.allowed.write_text(f"# who may sign the manifests\nt@example.invalid {kind} {blob}\n")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


def commit(repo: Repo, files: dict[str, str], key: Path | None, *, force: bool = False) -> str:
    """Commit and push ``files``, signed with the SSH key ``key`` (None: not signed)."""
    for name, text in files.items():
        (repo.work / "manifests" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo.work / "manifests" / name).write_text(text)
    git(repo.work, "add", "-A")
    if key is None:
        git(repo.work, "commit", "-q", "--no-gpg-sign", "-m", "unsigned")
    else:
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}.pub"]
        git(repo.work, *sign, "commit", "-q", "-S", "-m", f"signed by {key.name}")
    git(repo.work, "push", "-q", *(["-f"] if force else []), "origin", "main")
    return git(repo.work, "rev-parse", "HEAD")


def force_push(repo: Repo, sha: str) -> None:
    """Rewrite the origin's branch to ``sha`` (a force-push)."""
    git(repo.work, "reset", "-q", "--hard", sha)
    git(repo.work, "push", "-q", "-f", "origin", "main")


def checked_out(checkout: Path) -> str:
    return git(checkout, "rev-parse", "HEAD")


# ---------------------------------------------------------------------------- the clone on its own


def test_only_a_head_commit_signed_by_an_allowed_key_is_checked_out(tmp_path, keys, repo):
    clone = tmp_path / "clone"
    follow = GitCheckout(repo.url, "main", clone, trust=TrustedKeys.load(keys.allowed))
    assert TrustedKeys.load(keys.allowed).format == "ssh"

    unsigned_first = commit(repo, {"a.yaml": "a: 1\n"}, None)
    with pytest.raises(RevisionRefusedError, match=f"{unsigned_first[:12]} .*is not signed; nothing checked"):
        follow.update()
    assert not (clone / "manifests" / "a.yaml").exists(), "a refused revision reached the work tree"

    good = commit(repo, {"b.yaml": "b: 1\n"}, keys.trusted)
    assert follow.update() == good and checked_out(clone) == good
    assert (clone / "manifests" / "b.yaml").exists()

    unsigned = commit(repo, {"c.yaml": "c: 1\n"}, None)
    with pytest.raises(RevisionRefusedError, match=f"{unsigned[:12]} .*is not signed; {good[:12]} stays"):
        follow.update()
    assert checked_out(clone) == good and not (clone / "manifests" / "c.yaml").exists()

    commit(repo, {"d.yaml": "d: 1\n"}, keys.stranger)
    with pytest.raises(RevisionRefusedError, match=r"signed by a key that .*allowed_signers does not list"):
        follow.update()
    assert checked_out(clone) == good

    fixed = commit(repo, {"e.yaml": "e: 1\n"}, keys.trusted)
    assert follow.update() == fixed and (clone / "manifests" / "d.yaml").exists()


def test_a_force_push_back_is_noted_or_refused_with_require_fast_forward(tmp_path, keys, repo):
    older = commit(repo, {"a.yaml": "a: 1\n"}, keys.trusted)
    newer = commit(repo, {"a.yaml": "a: 2\n"}, keys.trusted)
    lenient = GitCheckout(repo.url, "main", tmp_path / "lenient")
    strict = GitCheckout(repo.url, "main", tmp_path / "strict", require_fast_forward=True)
    assert lenient.update() == newer and strict.update() == newer
    assert lenient.notice == "" and strict.notice == ""

    force_push(repo, older)  # a replay: every commit of it was validly signed once
    assert lenient.update() == older
    assert f"history rewound: {older[:12]} is older than {newer[:12]}" in lenient.notice
    assert (tmp_path / "lenient" / "manifests" / "a.yaml").read_text() == "a: 1\n"
    with pytest.raises(RevisionRefusedError, match=r"--require-fast-forward.*history rewound"):
        strict.update()
    assert checked_out(tmp_path / "strict") == newer
    assert (tmp_path / "strict" / "manifests" / "a.yaml").read_text() == "a: 2\n"

    other = commit(repo, {"z.yaml": "z: 1\n"}, keys.trusted)  # on top of older: a sibling of newer
    with pytest.raises(RevisionRefusedError, match=f"{other[:12]} does not descend from {newer[:12]}"):
        strict.update()
    assert lenient.update() == other and lenient.notice == "", "from older, other is a fast-forward"

    git(repo.work, "reset", "-q", "--hard", newer)
    onward = commit(repo, {"b.yaml": "b: 1\n"}, keys.trusted, force=True)
    assert strict.update() == onward and strict.notice == ""
    assert lenient.update() == onward
    assert f"history rewritten: {onward[:12]} does not descend from {other[:12]}" in lenient.notice


class GnuPG:
    """A GnuPG home with one signing key (no passphrase), and that key's public keyring exported
    armored (``keyring.asc``) and binary (``keyring.gpg``)."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("gpg") is None:
            pytest.fail("gpg is missing: install gnupg")
        # the agent's socket lives in the home: keep its path short (unix sockets: 108 bytes)
        self.home = Path(tempfile.mkdtemp(prefix="vr-gpg-"))
        self.env = {**GIT_ENV, "GNUPGHOME": str(self.home)}
        self.run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", "t <t@example.invalid>", "ed25519")
        self.armored, self.binary = folder / "keyring.asc", folder / "keyring.gpg"
        self.armored.write_bytes(self.run("gpg", "--export", "--armor"))
        self.binary.write_bytes(self.run("gpg", "--export"))

    def run(self, *command: str, cwd: Path | None = None) -> bytes:
        return subprocess.run(command, cwd=cwd, env=self.env, check=True, capture_output=True).stdout

    def commit(self, repo: Repo, files: dict[str, str]) -> str:
        """Commit and push ``files`` signed with the GnuPG key."""
        for name, text in files.items():
            (repo.work / "manifests" / name).parent.mkdir(parents=True, exist_ok=True)
            (repo.work / "manifests" / name).write_text(text)
        self.run("git", "add", "-A", cwd=repo.work)
        signing = ["-c", "gpg.format=openpgp", "-c", "user.signingkey=t@example.invalid"]
        self.run("git", *signing, "commit", "-q", "-S", "-m", "gpg", cwd=repo.work)
        self.run("git", "push", "-q", "origin", "main", cwd=repo.work)
        return git(repo.work, "rev-parse", "HEAD")

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, check=False, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def gnupg(tmp_path: Path):
    keys = GnuPG(tmp_path)
    yield keys
    keys.close()


def test_a_gnupg_keyring_armored_or_binary_is_used_the_same_way(tmp_path, gnupg, repo):
    signed = gnupg.commit(repo, {"a.yaml": "a: 1\n"})
    for keyring in (gnupg.armored, gnupg.binary):
        trust = TrustedKeys.load(keyring)
        assert trust.format == "gpg"
        follow = GitCheckout(repo.url, "main", tmp_path / f"clone{keyring.suffix}", trust=trust)
        assert follow.update() == signed
    commit(repo, {"b.yaml": "b: 1\n"}, None)
    with pytest.raises(RevisionRefusedError, match="is not signed"):
        follow.update()
    assert checked_out(tmp_path / "clone.gpg") == signed


def test_each_kind_of_keys_file_trusts_only_its_own_kind_of_signature(tmp_path, keys, gnupg, repo):
    """An SSH signature never passes a GnuPG keyring, nor a GnuPG one an allowed-signers file,
    whatever the user's own git and GnuPG setup trusts."""
    ssh_signed = commit(repo, {"a.yaml": "a: 1\n"}, keys.trusted)
    gpg_signed = gnupg.commit(repo, {"b.yaml": "b: 1\n"})
    GitCheckout(repo.url, "main", tmp_path / "clone").update()
    checkout = GitRepo(tmp_path / "clone")
    by_keyring, by_signers = TrustedKeys.load(gnupg.armored), TrustedKeys.load(keys.allowed)
    assert by_keyring.distrust(checkout, gpg_signed) is None
    assert by_signers.distrust(checkout, ssh_signed) is None
    assert "does not list" in (by_keyring.distrust(checkout, ssh_signed) or "")
    assert "cannot be checked" in (by_signers.distrust(checkout, gpg_signed) or "")


def test_the_keys_file_is_told_apart_by_its_content(tmp_path, keys):
    assert keys_format(keys.allowed.read_bytes(), "f") == "ssh"
    options = b'dev@example.invalid,ops@example.invalid namespaces="git",valid-after="20240101" '
    assert keys_format(options + b"ssh-ed25519 AAAAC3Nz x\n", "f") == "ssh"
    assert keys_format(b"  \n-----BEGIN PGP PUBLIC KEY BLOCK-----\n...", "f") == "gpg"
    assert keys_format(b"\x99\x01\x0d\x04", "f") == "gpg"  # binary OpenPGP packets
    assert keys_format(b"\x00\x00\x00\x20\x01\x01\x00\x02KBXf", "f") == "gpg"  # a keybox
    for text, problem in (
        (b"", "lists no key"),
        (b"# only a comment\n", "lists no key"),
        (b"ssh-ed25519 AAAAC3Nz\n", "f:1: not an allowed-signers line"),
        (b"someone@example.invalid\n", "f:1: not an allowed-signers line"),
        (b"a@b ssh-ed25519 AAAA\nnot a line\n", "f:2: not an allowed-signers line"),
        (b"\x7fELF\xff\xfe", "neither a GnuPG keyring"),  # not text, and no OpenPGP packet
    ):
        with pytest.raises(SourceCheckError, match=problem):
            keys_format(text, "f")
    with pytest.raises(SourceCheckError, match="No such file"):
        TrustedKeys.load(tmp_path / "missing")


# ---------------------------------------------------------------------------- the daemon


@pytest.fixture
def daemons(tmp_path: Path):
    started: list[DaemonProcess] = []

    def start(repo: Repo, *args: str) -> DaemonProcess:
        process = DaemonProcess(
            "--source", repo.url, "--interval", "1h", *args, secret=b"s", state_dir=tmp_path / "state"
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


def wait_source(daemon: DaemonProcess, text: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = daemon.status()
        if text in status["source"]["message"]:
            return status
        time.sleep(0.05)
    raise AssertionError(f"/status never said {text!r}: {status}; log {daemon.log[-5:]}")


def test_the_daemon_applies_signed_revisions_only(tmp_path, keys, repo, daemons):
    state = sandbox_state(tmp_path)
    good = commit(repo, {"hosts.yaml": HOST, "web.yaml": domain_yaml("web")}, keys.trusted)
    daemon = daemons(repo, "--verify-signatures", str(keys.allowed))
    daemon.wait_for("hv1", result="applied", revision=good)
    applied = state.read_text()
    checkout = tmp_path / "state" / "checkout"

    for name, key, why in (("db", None, "is not signed"), ("mq", keys.stranger, "does not list")):
        bad = commit(repo, {f"{name}.yaml": domain_yaml(name)}, key)
        assert daemon.webhook() == 202
        status = wait_source(daemon, f"revision {bad[:12]} of main refused")
        source = status["source"]["message"]
        assert why in source and f"{good[:12]} stays checked out" in source
        assert status["hosts"]["hv1"]["appliedRevision"] == good
        assert status["hosts"]["hv1"]["result"] == "error" and why in status["hosts"]["hv1"]["message"]
        daemon.wait_for_line(f"fetch failed: revision {bad[:12]} of main refused")
        assert state.read_text() == applied, "a refused revision changed the host"
        assert checked_out(checkout) == good and not (checkout / "manifests" / f"{name}.yaml").exists()

    signed = commit(repo, {"cache.yaml": domain_yaml("cache")}, keys.trusted)
    assert daemon.webhook() == 202
    daemon.wait_for("hv1", result="applied", revision=signed, appliedRevision=signed)
    assert daemon.status()["source"]["message"] == ""
    assert all(f"<name>{name}</name>" in state.read_text() for name in ("db", "mq", "cache"))


def test_the_daemon_refuses_a_force_push_back_with_require_fast_forward(tmp_path, keys, repo, daemons):
    state = sandbox_state(tmp_path)
    older = commit(repo, {"hosts.yaml": HOST, "web.yaml": domain_yaml("web")}, keys.trusted)
    newer = commit(repo, {"db.yaml": domain_yaml("db")}, keys.trusted)
    daemon = daemons(repo, "--verify-signatures", str(keys.allowed), "--require-fast-forward")
    daemon.wait_for("hv1", result="applied", revision=newer)
    force_push(repo, older)
    assert daemon.webhook() == 202
    status = wait_source(daemon, "history rewound")
    assert f"revision {older[:12]} of main refused (--require-fast-forward)" in status["source"]["message"]
    assert status["hosts"]["hv1"]["appliedRevision"] == newer
    daemon.wait_for_line(f"fetch failed: revision {older[:12]} of main refused (--require-fast-forward)")
    assert "<name>db</name>" in state.read_text()
    assert checked_out(tmp_path / "state" / "checkout") == newer


def test_without_require_fast_forward_a_force_push_back_is_applied_and_logged(tmp_path, keys, repo, daemons):
    older = commit(repo, {"hosts.yaml": HOST, "web.yaml": domain_yaml("web")}, keys.trusted)
    newer = commit(repo, {"db.yaml": domain_yaml("db", state="stopped")}, keys.trusted)
    daemon = daemons(repo, "--verify-signatures", str(keys.allowed))
    daemon.wait_for("hv1", result="applied", revision=newer)
    force_push(repo, older)
    assert daemon.webhook() == 202
    daemon.wait_for("hv1", revision=older, appliedRevision=older)
    line = daemon.wait_for_line("source: history rewound")
    assert f"{older[:12]} is older than {newer[:12]}" in line and "--require-fast-forward refuses it" in line


@pytest.mark.parametrize(
    ("source", "keys_text", "error"),
    [
        ("git", "not a key\n", "not an allowed-signers line"),
        ("git", None, "No such file"),
        ("dir", "t@example.invalid ssh-ed25519 AAAA\n", "need a git source"),
    ],
)
def test_the_daemon_will_not_start_with_keys_it_cannot_use(tmp_path, repo, source, keys_text, error):
    keys_file = tmp_path / "keys"
    if keys_text is not None:
        keys_file.write_text(keys_text)
    where = repo.url if source == "git" else str(tmp_path)
    command = [sys.executable, "-m", "reconciler", "daemon", "--source", where, "--listen", "127.0.0.1:0"]
    command += ["--state-dir", str(tmp_path / "state"), "--verify-signatures", str(keys_file)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and error in run.stderr, run.stderr
