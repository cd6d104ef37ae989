"""The clone the daemon follows, through GitPython, and the identity of a manifest root in it.

The daemon's clone can be told to check every new revision before it is checked out: that its head
commit is signed by a trusted key (:class:`TrustedKeys`: an OpenSSH allowed-signers file or a
GnuPG keyring, verified by git itself), and that it descends from the revision checked out before
(a force-push back to an older, still validly signed, commit is a replay). A refused revision never
reaches the work tree: the last good one stays checked out.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from reconciler.errors import RevisionRefusedError, SourceCheckError, SourceError

if TYPE_CHECKING:
    import git

log = logging.getLogger("virt_reconcile.adapters.gitsource")

FIRST_FETCH_DEPTH = 50  # commits of history fetched by a new clone (later fetches add what is new)
DEEPEN_GAP = 60.0  # seconds between two tries to fetch a shallow clone's whole history


def root_identity(folder: Path) -> str:
    """Which manifest root ``folder`` is, the same from every clone: ``git:REPOSITORY:PATH`` (the
    origin URL without scheme, user, port and ``.git``, e.g. ``github.com/team-a/infra``, or the
    work tree's absolute path without an origin; and the folder's path in it), or
    ``dir:ABSOLUTE_PATH`` outside git. Ownership records it, so only a plan of this same root may
    undefine what it defined: not a subfolder, not another repository's manifests.
    """
    import git

    folder = folder.resolve()
    try:
        repo = git.Repo(folder, search_parent_directories=True)
        top = Path(repo.working_tree_dir or folder).resolve()
        urls = [remote.url for remote in repo.remotes if remote.name == "origin"]
        relative = folder.relative_to(top).as_posix()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return f"dir:{folder}"
    return f"git:{repository_name(urls[0]) if urls else str(top)}:{relative}"


#: The user information of a URL (``https://user:TOKEN@host/…``): a token given to git lives there.
_USER_INFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def without_credentials(text: str) -> str:
    """``text`` with the user information of every URL in it replaced by ``***`` (a token in a
    source URL must reach no log, ``/status``, history or notification)."""
    return _USER_INFO.sub(r"\1***@", text)


def repository_name(url: str) -> str:
    """A clone URL as the repository it names, whatever the way to it: ``git@host:org/repo.git``,
    ``ssh://git@host:22/org/repo``, ``https://host/org/repo.git`` → ``host/org/repo``; a local path
    or ``file://`` URL → its absolute path without ``.git``."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = parts.path
    elif parts.scheme and parts.netloc:
        path = f"{(parts.hostname or '').lower()}{parts.path}"
    elif re.match(r"^[\w.-]+@[\w.-]+:", url) or re.match(r"^[\w.-]+:[^/]", url):  # scp-like
        host, _, rest = url.partition(":")
        path = f"{host.rsplit('@', 1)[-1].lower()}/{rest.lstrip('/')}"
    else:
        path = str(Path(url).resolve()) if not url.startswith("/") else url
    return path.removesuffix(".git").rstrip("/")


KeysFormat = Literal["ssh", "gpg"]
_SSH_KEY_TYPES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")
_PGP_ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
#: ``%G?`` of ``git log``: what each verdict but G (good, from a trusted key) means.
_SIGNATURE_VERDICTS = {
    "N": "is not signed",
    "U": "is signed by a key that {keys} does not list",
    "E": "has a signature that cannot be checked (its key is not in {keys})",
    "B": "has a bad signature",
    "X": "has an expired signature",
    "Y": "is signed by an expired key",
    "R": "is signed by a revoked key",
}


def keys_format(data: bytes, name: str) -> KeysFormat:
    """Whether ``data`` (the file ``name``) is a GnuPG keyring (armored, binary OpenPGP packets, or
    a keybox) or an OpenSSH allowed-signers file; raise ``SourceCheckError`` when it is neither."""
    if data.lstrip().startswith(_PGP_ARMOR) or data[8:12] == b"KBXf" or (data and data[0] & 0x80):
        return "gpg"
    try:
        lines = data.decode().splitlines()
    except UnicodeDecodeError as err:
        raise SourceCheckError(f"{name}: neither a GnuPG keyring nor an allowed-signers file") from err
    keys = 0
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        # PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]: the key type is never the first word
        typed = [i for i, word in enumerate(words[1:], 1) if word.startswith(_SSH_KEY_TYPES)]
        if not typed or typed[0] + 1 >= len(words):
            raise SourceCheckError(
                f"{name}:{number}: not an allowed-signers line (PRINCIPALS [OPTIONS] KEYTYPE KEY), "
                "and the file is not a GnuPG keyring"
            )
        keys += 1
    if not keys:
        raise SourceCheckError(f"{name}: lists no key (an allowed-signers file or a GnuPG keyring)")
    return "ssh"


@dataclass(frozen=True)
class TrustedKeys:
    """The keys a revision's head commit must be signed by (``daemon --verify-signatures FILE``).

    git verifies, as ``git verify-commit`` would: with ``gpg.ssh.allowedSignersFile`` for an
    allowed-signers file, or against a throw-away GnuPG home holding only the keyring (every key in
    it trusted: listing a key is the trust). The other kind of signature always finds no key: an
    SSH signature is checked against an empty signers list, a GnuPG one against the empty home.
    """

    path: Path
    format: KeysFormat

    @classmethod
    def load(cls, path: Path) -> TrustedKeys:
        """The keys in ``path``; ``SourceCheckError`` when unreadable, or when git cannot check them."""
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SourceCheckError(f"--verify-signatures {path}: {err.strerror or err}") from err
        found = keys_format(data, str(path))
        tool = "gpg" if found == "gpg" else "ssh-keygen"
        if shutil.which(tool) is None:
            raise SourceCheckError(f"--verify-signatures {path}: checking its signatures needs {tool}")
        return cls(path.resolve(), found)

    def distrust(self, repo: git.Repo, sha: str) -> str | None:
        """Why commit ``sha`` is not trusted (``is not signed`` …), or None: signed by a listed key."""
        import git

        with tempfile.TemporaryDirectory(prefix="vr-gnupg-") as home:
            signers = str(self.path) if self.format == "ssh" else os.devnull
            if self.format == "gpg":
                self._gnupg_home(Path(home))
            options = [
                f"gpg.ssh.allowedSignersFile={signers}",
                "gpg.ssh.program=ssh-keygen",
                "gpg.openpgp.program=gpg",
            ]
            try:
                output = repo.git(c=options).log("-1", "--format=%G?%n%GK", sha, env={"GNUPGHOME": home})
            except git.GitCommandError as err:
                return f"cannot be checked: {' '.join(str(err.stderr).split())}"
        verdict, _, key = str(output).partition("\n")
        if verdict == "G":
            return None
        why = _SIGNATURE_VERDICTS.get(verdict, f"has an unknown signature verdict {verdict!r}")
        why = why.format(keys=self.path)
        return f"{why} (key {key})" if key.strip() and verdict != "N" else why

    def _gnupg_home(self, home: Path) -> None:
        """A GnuPG home knowing only the keyring's keys, each trusted, starting no agent."""
        home.chmod(0o700)
        (home / "gpg.conf").write_text("trust-model always\nno-autostart\n")
        if self.path.read_bytes()[8:12] == b"KBXf":
            shutil.copyfile(self.path, home / "pubring.kbx")  # a keybox is GnuPG's own keyring file
            return
        imported = subprocess.run(
            ["gpg", "--batch", "--quiet", "--homedir", str(home), "--import", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if imported.returncode != 0:
            detail = " ".join(imported.stderr.split())
            raise SourceCheckError(f"--verify-signatures {self.path}: gpg cannot import it: {detail}")


class GitCheckout:
    """A clone of ``url`` in ``directory`` that follows ``branch``: fetch, check, then reset to its tip.

    ``trust``: the head commit of a new revision must be signed by one of its keys.
    ``require_fast_forward``: a new revision must descend from the one checked out. Without it, a
    revision that does not is checked out all the same, and :attr:`notice` says so until the next.
    """

    def __init__(
        self,
        url: str,
        branch: str,
        directory: Path,
        *,
        trust: TrustedKeys | None = None,
        require_fast_forward: bool = False,
    ) -> None:
        self.url, self.branch, self.directory = url, branch, directory
        self.trust = trust
        self.require_fast_forward = require_fast_forward
        self.notice = ""  # a history rewrite checked out anyway, or ""
        self._deepen_after = 0.0  # time.monotonic() before which a shallow clone is not deepened again

    def update(self) -> str:
        """Fetch, check the branch's newest commit, check it out, and return its SHA.

        The work tree is replaced only by a complete fetch of a revision that passed the checks:
        when the remote is unreachable (``SourceError``, retryable) or the revision is refused
        (``RevisionRefusedError``), the previous checkout (the last good revision) stays as it was.
        """
        import git

        try:
            repo = self._fetched()
            commit = repo.commit(f"origin/{self.branch}")
            previous = _checked_out(repo)
            if commit != previous:
                self._check(repo, commit, previous)
                repo.head.reset(commit, index=True, working_tree=True)
            return str(commit.hexsha)
        except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            text = f"git {self.url} ({self.branch}): {' '.join(str(detail).split())}"
            raise SourceError(without_credentials(text)) from err

    def contained(self, head: str, commits: frozenset[str]) -> frozenset[str]:
        """Of ``commits``, those ``head`` (a commit of the clone) contains: itself or an ancestor,
        or one this clone checked out before (its HEAD's reflog): a revision the branch moved away
        from by a force-push is the past the daemon follows the branch back from, not a newer one.

        The clone starts shallow, so a commit it lacks may be an old ancestor past its depth: then
        its whole history is fetched once (tried again at most every :data:`DEEPEN_GAP` seconds
        while that fails) and the commits it lacked asked again; until then they are not contained.
        """
        from reconciler.adapters.gitfacts import ancestry

        found = ancestry(self.directory, [head], commits)
        contained, missing = found.contained, found.missing
        shallow = (self.directory / ".git" / "shallow").is_file()
        if missing and shallow and time.monotonic() >= self._deepen_after and self._deepened():
            found = ancestry(self.directory, [head], missing)
            contained, missing = contained | found.contained, found.missing
        rest = commits - contained - missing
        past = self._past_heads(head) if rest else []
        return contained | ancestry(self.directory, past, rest).contained if past else contained

    def _deepened(self) -> bool:
        """Fetch the shallow clone's whole history; False (logged) when that fails."""
        import git

        self._deepen_after = time.monotonic() + DEEPEN_GAP
        try:
            git.Repo(self.directory).remotes.origin.fetch(self.branch, unshallow=True)
        except (git.GitCommandError, git.InvalidGitRepositoryError, ValueError) as err:
            detail = without_credentials(" ".join(str(getattr(err, "stderr", "") or err).split()))
            log.warning("source: the clone's history could not be fetched whole: %s", detail)
            return False
        return True

    def _past_heads(self, head: str) -> list[str]:
        """The commits this clone checked out before it last checked out ``head`` (its HEAD's
        reflog, older than ``head``'s newest entry), newest first: never one checked out after it
        (a lane's pass still at ``head`` once the loop took up a newer revision must not count that
        newer one as its past). None when ``head`` is not in the reflog."""
        import git

        try:
            listed = str(git.Repo(self.directory).git.reflog("show", "--format=%H", "HEAD", "--")).split()
        except (git.GitCommandError, git.InvalidGitRepositoryError, ValueError):
            return []
        if head not in listed:
            return []
        older = listed[listed.index(head) + 1 :]
        return [sha for sha in dict.fromkeys(older) if sha != head]

    def _fetched(self) -> git.Repo:
        """The clone, its branch fetched. A new clone is an empty repository plus a fetch, not
        ``git clone``: nothing is checked out before the checks pass."""
        import git

        new = not (self.directory / ".git").is_dir()
        if new:
            repo = git.Repo.init(self.directory, mkdir=True, initial_branch=self.branch)
        else:
            repo = git.Repo(self.directory)
        if "origin" in [remote.name for remote in repo.remotes]:
            repo.remotes.origin.set_url(self.url)
        else:
            repo.create_remote("origin", self.url)
        if new:
            repo.remotes.origin.fetch(self.branch, prune=True, depth=FIRST_FETCH_DEPTH)
        else:
            repo.remotes.origin.fetch(self.branch, prune=True)
        return repo

    def _check(self, repo: git.Repo, commit: git.Commit, previous: git.Commit | None) -> None:
        """Refuse ``commit`` (``RevisionRefusedError``) when it fails a check; note a history
        rewrite that is let through."""
        sha = commit.hexsha[:12]
        stays = f"{previous.hexsha[:12]} stays checked out" if previous is not None else "nothing checked out"
        if self.trust is not None:
            why = self.trust.distrust(repo, commit.hexsha)
            if why is not None:
                raise RevisionRefusedError(
                    f"revision {sha} of {self.branch} refused: its commit {why}; {stays}"
                )
        rewrite = _history_rewrite(repo, commit, previous)
        if rewrite is not None and self.require_fast_forward:
            raise RevisionRefusedError(
                f"revision {sha} of {self.branch} refused (--require-fast-forward): {rewrite}; {stays}"
            )
        self.notice = f"{rewrite}: checked out anyway" if rewrite is not None else ""
        if self.notice:
            log.warning("source: %s (--require-fast-forward refuses it)", self.notice)


def _checked_out(repo: git.Repo) -> git.Commit | None:
    """The commit checked out now, or None in a clone that has checked out nothing yet."""
    try:
        return repo.head.commit
    except ValueError:
        return None


def _history_rewrite(repo: git.Repo, commit: git.Commit, previous: git.Commit | None) -> str | None:
    """How ``commit`` breaks from ``previous`` (a force-push), or None when it descends from it."""
    if previous is None or repo.is_ancestor(previous, commit):
        return None
    sha, before = commit.hexsha[:12], previous.hexsha[:12]
    if repo.is_ancestor(commit, previous):
        return f"history rewound: {sha} is older than {before}, checked out before (a force-push)"
    return f"history rewritten: {sha} does not descend from {before}, checked out before (a force-push)"
