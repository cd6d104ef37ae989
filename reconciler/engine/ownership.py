"""Whose domain is it: the manifest root recorded in a domain's ownership against the one a plan
loaded (pure).

A root is ``git:REPOSITORY:FOLDER`` or ``dir:/ABSOLUTE/FOLDER`` (see the git adapter). A plan that
loaded a subfolder of the tree that defined a domain, or a single file (root unknown), may change
the domain but never takes its ownership over and never prunes it; a plan of another root neither
changes nor prunes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from reconciler.spec.models import Owner


class Relation(StrEnum):
    """How the root a plan loaded relates to the root recorded in a domain's ownership."""

    SAME = "same"  # this plan loaded the tree that owns the domain
    PART = "part"  # a subfolder of that tree, or a single file (root unknown): change, never prune
    UNRECORDED = "unrecorded"  # ownership from an older version: no root to compare
    OTHER = "other"  # another tree: hands off


def relation(recorded: str, loaded: str) -> Relation:
    """How ``loaded`` (the plan's root, "" when a single file was loaded) relates to ``recorded``."""
    if not recorded:
        return Relation.UNRECORDED
    if not loaded:
        return Relation.PART
    if recorded == loaded:
        return Relation.SAME
    return Relation.PART if _within(loaded, recorded) else Relation.OTHER


def _within(inner: str, outer: str) -> bool:
    """Whether root ``inner`` is a folder inside root ``outer`` (same repository or file system)."""
    kind, _, rest = outer.partition(":")
    inner_kind, _, inner_rest = inner.partition(":")
    if kind != inner_kind:
        return False
    if kind == "git":
        repository, _, folder = rest.rpartition(":")
        inner_repository, _, inner_folder = inner_rest.rpartition(":")
        if repository != inner_repository:
            return False
        rest, inner_rest = folder, inner_folder
    if rest in ("", "."):
        return True
    return inner_rest == rest or inner_rest.startswith(rest.rstrip("/") + "/")


def owner_to_write(found: Owner | None, wanted: Owner) -> Owner:
    """The ownership a redefine writes: what the plan wants, but keeping the recorded root when the
    plan loaded only part of that tree (a single file or a subfolder), and the digest of the seed
    last uploaded (a reseed records its own, once its upload is done)."""
    if found is None:
        return wanted
    if found.seed != wanted.seed:
        wanted = wanted.model_copy(update={"seed": found.seed})
    if relation(found.root, wanted.root) is not Relation.PART:
        return wanted
    return wanted.model_copy(update={"root": found.root})


#: A commit name, abbreviated or whole (SHA-1 or SHA-256): what a git revision records.
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


def commit_of(revision: str) -> str:
    """The commit a recorded revision names, its ``+dirty`` suffix dropped; "" when it names none
    (empty, or a directory source's ``dir:`` digest): such a revision is never held against."""
    commit = revision.removesuffix("+dirty")
    return commit if _COMMIT.match(commit) else ""


@dataclass(frozen=True)
class RevisionCheck:
    """Which recorded revisions this run's revision contains, asked of git once per pass for the
    distinct commits the observed domains record: a domain written by a revision this run does not
    contain (a newer commit, or another branch) is held, so a stale run never undoes it."""

    run: str  # this run's revision, as recorded (``+dirty`` kept for the message)
    contained: frozenset[str]  # the recorded commits (besides the run's own) that it contains

    def newer(self, recorded: str) -> bool:
        """Whether ``recorded`` (a domain's ownership revision) is one this run does not contain."""
        commit = commit_of(recorded)
        return bool(commit) and commit != commit_of(self.run) and commit not in self.contained

    def reason(self, recorded: str) -> str:
        """Why a domain written by ``recorded`` is held (the ``Held`` text)."""
        run = commit_of(self.run)[:12] + ("+dirty" if self.run.endswith("+dirty") else "")
        return (
            f"written by revision {commit_of(recorded)[:12]}, which this run's revision {run} does not "
            "contain (a newer commit, or another branch): pull it first, or apply --overwrite-newer"
        )
