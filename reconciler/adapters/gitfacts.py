"""The manifests' git revision and root identity, asked of git's own command line in the background.

``plan`` and ``apply`` record the commit they work from and which manifest root they loaded
(ownership: only the same root prunes). Three short ``git`` processes answer that: started before
the manifests load, they run while the manifests load, so a plan waits for none of them and never
imports GitPython (which costs a CLI start-up more than all three processes).

A checkout another user owns is refused, as git itself refuses it (``safe.directory``: its config
could make git run commands as us), with what to do; so is a checkout on a machine without git.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.adapters.gitsource import repository_name
from reconciler.errors import GitRefusedError

#: A commit name as ``git rev-parse`` prints it (SHA-1, or SHA-256 in a SHA-256 repository).
_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
#: What git says outside any repository (any other failure of git's is an error: see below).
_NOT_A_REPOSITORY = "not a git repository"
#: Never take the index lock to refresh it (a status beside another git command), no prompts.
_ENVIRONMENT = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
#: What ``git rev-parse --local-env-vars`` lists: set by git for its hooks (an apply run from one),
#: they would point git at another repository than the folder's, or past its ownership check.
_REPOSITORY_VARIABLES = frozenset(
    [
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_SHALLOW_FILE",
        "GIT_COMMON_DIR",
    ]
)


def git_environment() -> dict[str, str]:
    """This process's environment for git, without what would make it read another repository
    (:data:`_REPOSITORY_VARIABLES`, and the ``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` pairs)."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if name not in _REPOSITORY_VARIABLES and not name.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }
    return {**kept, **_ENVIRONMENT}


@dataclass(frozen=True)
class _Answers:
    """What the three git processes printed (``None``: git could not be run at all)."""

    top_and_head: subprocess.CompletedProcess[str] | None
    origin: subprocess.CompletedProcess[str] | None
    status: subprocess.CompletedProcess[str] | None


class GitFacts:
    """The revision and root identity of the manifests in ``folder`` (a folder: the manifest root),
    asked of git as soon as this is made; :meth:`revision` and :meth:`root_identity` wait for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self._answers: _Answers | None = None
        self._asked = threading.Event()
        # A daemon thread: a command that fails before it needs the answers does not wait for git.
        threading.Thread(target=self._ask, name="vr-git", daemon=True).start()

    def revision(self) -> str:
        """The commit the manifests come from, ``+dirty`` with local edits below the folder (tracked
        or not); '' outside git or before the first commit."""
        top, head = self._top_and_head()
        if top is None:
            return ""
        status = self._wait().status
        dirty = status is not None and status.returncode == 0 and bool(status.stdout)
        return head + ("+dirty" if dirty and head else "")

    def root_identity(self) -> str:
        """Which manifest root the folder is: ``git:REPOSITORY:PATH`` or ``dir:ABSOLUTE_PATH`` (see
        :func:`reconciler.adapters.gitsource.root_identity`, which the daemon's clone uses)."""
        top, _ = self._top_and_head()
        if top is None:
            return f"dir:{self.folder}"
        origin = self._wait().origin
        url = origin.stdout.strip() if origin is not None and origin.returncode == 0 else ""
        relative = self.folder.relative_to(top).as_posix() if self.folder.is_relative_to(top) else "."
        return f"git:{repository_name(url) if url else str(top)}:{relative}"

    def contained_revisions(self, commits: frozenset[str]) -> frozenset[str]:
        """Of ``commits`` (recorded revisions' commits), those HEAD contains: HEAD itself or its
        ancestors. Asked in two git processes whatever their number (none outside git)."""
        top, head = self._top_and_head()
        if top is None or not head or not commits:
            return frozenset()
        return ancestry(self.folder, [head], commits).contained

    def _top_and_head(self) -> tuple[Path | None, str]:
        """The work tree's top level and HEAD's commit ('' before the first commit); None outside
        git. Raise ``GitRefusedError`` when git will not answer, or is missing in a checkout."""
        answer = self._wait().top_and_head
        if answer is None:  # git could not be started: not installed (or the folder is gone)
            folders = (self.folder, *self.folder.parents) if self.folder.is_dir() else ()
            if any((folder / ".git").exists() for folder in folders):
                raise GitRefusedError(f"{self.folder} is in a git checkout, and git is not installed")
            return None, ""
        lines = answer.stdout.splitlines()
        if lines and lines[0].startswith("/"):
            head = lines[1] if len(lines) > 1 and _COMMIT.match(lines[1]) else ""
            return Path(lines[0]).resolve(), head
        if _NOT_A_REPOSITORY in answer.stderr or not self.folder.is_dir():
            return None, ""
        said = " ".join(answer.stderr.split())
        raise GitRefusedError(
            f"git will not read the manifests' revision in {self.folder}: {said} "
            "(run virt-reconcile as the checkout's owner, or trust it as git says)"
        )

    def _wait(self) -> _Answers:
        self._asked.wait()
        assert self._answers is not None
        return self._answers

    def _ask(self) -> None:
        """Run the three git processes side by side and keep what they print; whatever happens,
        every process started is waited for and the answers are set (None: git could not run)."""
        commands = (
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            ["git", "config", "--get", "remote.origin.url"],
            ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", "."],
        )
        running: list[subprocess.Popen[bytes]] = []
        try:
            environment = git_environment()
            for command in commands:
                running.append(self._start(command, environment))
            self._answers = _Answers(*(self._finish(process) for process in running))
        except Exception:  # no git on this machine, the folder gone: answered as "git could not run"
            self._answers = _Answers(None, None, None)
        finally:
            for process in running:
                if process.poll() is None:
                    process.kill()
                process.wait()
            self._asked.set()

    def _start(self, command: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            cwd=self.folder,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    @staticmethod
    def _finish(process: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[str]:
        """What one process printed, as text (a file name that is not UTF-8 kept as escapes)."""
        out, err = process.communicate()
        text = (out.decode(errors="surrogateescape"), err.decode(errors="surrogateescape"))
        return subprocess.CompletedProcess(process.args, process.returncode, *text)


@dataclass(frozen=True)
class Ancestry:
    """What git says of some commits against one head: those it contains, those it lacks."""

    contained: frozenset[str]
    missing: frozenset[str]  # not in the repository (newer, another branch, or past a shallow clone)


def ancestry(folder: Path, heads: Sequence[str], commits: frozenset[str]) -> Ancestry:
    """Which of ``commits`` are one of ``heads`` or an ancestor of one, in the repository of
    ``folder``: one ``git cat-file --batch-check`` drops what the repository lacks, one ``git
    rev-list KNOWN --not HEADS`` lists those no head reaches. A commit git cannot answer for is not
    contained."""
    names = sorted(commits)
    environment = git_environment()
    found = _run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"], folder, environment, names)
    if found is None:
        return Ancestry(frozenset(), frozenset())
    known: dict[str, str] = {}  # full commit name -> the name asked
    for name, line in zip(names, found.splitlines(), strict=False):
        full, _, kind = line.partition(" ")
        if kind == "commit":
            known[full] = name
    missing = frozenset(name for name in names if name not in known.values())
    if not known:
        return Ancestry(frozenset(), missing)
    outside = _run(["git", "rev-list", *known, "--not", *heads, "--"], folder, environment)
    if outside is None:
        return Ancestry(frozenset(), missing)
    unreached = set(outside.split())
    return Ancestry(frozenset(name for full, name in known.items() if full not in unreached), missing)


def _run(
    command: list[str], folder: Path, environment: dict[str, str], lines: Sequence[str] = ()
) -> str | None:
    """What one git command prints given ``lines`` on its input; None when it fails."""
    try:
        done = subprocess.run(
            command,
            cwd=folder,
            env=environment,
            input="".join(f"{line}\n" for line in lines),
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None
