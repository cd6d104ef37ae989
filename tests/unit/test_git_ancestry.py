"""Which recorded revisions a checkout's HEAD contains, asked of git in a real repository with a few
commits and a branch: the same answers as ``git merge-base --is-ancestor``, for the CLI's checkout
(``GitFacts``) and the daemon's shallow clone (``GitSource``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.adapters.gitfacts import GitFacts, ancestry
from reconciler.adapters.gitsource import FIRST_FETCH_DEPTH
from reconciler.daemon.sources import GitSource
from tests.daemon_helpers import git

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def commit(top: Path, text: str) -> str:
    (top / "manifests" / "web.yaml").write_text(f"# {text}\n")
    git(top, "commit", "-q", "-am", text)
    return git(top, "rev-parse", "HEAD")


def is_ancestor(top: Path, recorded: str, head: str) -> bool:
    """git's own answer, the reference."""
    done = subprocess.run(
        ["git", "-C", str(top), "merge-base", "--is-ancestor", recorded, head],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def new_repository(top: Path, text: str) -> str:
    """A new repository at ``top`` (branch main) whose first commit holds manifests/web.yaml; its sha."""
    (top / "manifests").mkdir(parents=True)
    git(top, "init", "-q", "-b", "main")
    (top / "manifests" / "web.yaml").write_text(f"# {text}\n")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", text)
    return git(top, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """first - second - third (main, checked out at second) and second - other (a branch)."""
    top = tmp_path / "infra"
    commits = {"first": new_repository(top, "first"), "second": commit(top, "second")}
    commits["third"] = commit(top, "third")
    git(top, "checkout", "-q", "-b", "other", commits["second"])
    commits["other"] = commit(top, "other")
    git(top, "checkout", "-q", "--detach", commits["second"])  # a stale checkout
    return top, commits


def test_head_and_its_ancestors_are_contained_newer_commits_and_other_branches_are_not(history):
    top, commits = history
    facts = GitFacts(top / "manifests")
    head = commits["second"]
    assert facts.revision() == head
    unknown = "d" * 40
    asked = frozenset({*commits.values(), unknown})
    contained = facts.contained_revisions(asked)
    assert contained == {commits["first"], commits["second"]}
    assert contained == {c for c in commits.values() if is_ancestor(top, c, head)}
    assert not is_ancestor(top, commits["third"], head) and not is_ancestor(top, commits["other"], head)
    assert ancestry(top, [head], asked).missing == {unknown}


def test_a_dirty_checkout_compares_its_commit(history):
    top, commits = history
    (top / "manifests" / "db.yaml").write_text("# local edit\n")
    facts = GitFacts(top / "manifests")
    assert facts.revision() == commits["second"] + "+dirty"
    assert facts.contained_revisions(frozenset({commits["first"], commits["third"]})) == {commits["first"]}


def test_an_abbreviated_or_non_commit_name_and_no_git_at_all(history, tmp_path):
    top, commits = history
    tree = git(top, "rev-parse", "HEAD^{tree}")  # an object, but no commit
    facts = GitFacts(top / "manifests")
    assert facts.contained_revisions(frozenset({commits["first"][:12], tree})) == {commits["first"][:12]}
    assert facts.contained_revisions(frozenset()) == frozenset()
    plain = tmp_path / "plain"
    plain.mkdir()
    assert GitFacts(plain).contained_revisions(frozenset({commits["first"]})) == frozenset()


def test_the_daemons_shallow_clone_fetches_its_history_for_an_old_revision(tmp_path):
    origin = tmp_path / "origin"
    oldest = new_repository(origin, "0")
    for n in range(FIRST_FETCH_DEPTH + 2):
        head = commit(origin, str(n + 1))
    source = GitSource(f"file://{origin}", "main", "manifests", tmp_path / "state")
    assert source.update() == head
    clone = tmp_path / "state" / "checkout"
    assert (clone / ".git" / "shallow").is_file()
    newer = "e" * 40
    assert source.contained_revisions(head, frozenset({oldest, newer})) == {oldest}
    assert is_ancestor(clone, oldest, head)  # its history is whole now
    # A commit the daemon has not fetched yet is not contained until it has.
    later = commit(origin, "later")
    assert source.contained_revisions(head, frozenset({later})) == frozenset()
    assert source.update() == later
    assert source.contained_revisions(later, frozenset({later, head, oldest})) == {later, head, oldest}


def test_the_daemon_follows_its_branch_back_from_a_revision_it_checked_out_before(history, tmp_path):
    top, commits = history  # used as the origin: main is at third
    source = GitSource(f"file://{top}", "main", "manifests", tmp_path / "state")
    assert source.update() == commits["third"]
    git(top, "branch", "-q", "-f", "main", commits["second"])  # a force-push back
    assert source.update() == commits["second"]
    asked = frozenset({commits["third"], commits["other"], commits["first"]})
    # third: checked out before, then left by the branch; other: another branch, never checked out.
    assert source.contained_revisions(commits["second"], asked) == {commits["third"], commits["first"]}
    assert not is_ancestor(tmp_path / "state" / "checkout", commits["third"], commits["second"])


def test_a_pass_still_at_an_older_revision_never_counts_a_newer_one_checked_out_since(history, tmp_path):
    """A lane's pass at ``second`` (it began before the loop took up ``third``, or waited for a
    slot) must hold what ``third`` wrote: only commits checked out before its own revision are its
    past, never one the clone checked out after it."""
    top, commits = history
    git(top, "branch", "-q", "-f", "main", commits["second"])
    source = GitSource(f"file://{top}", "main", "manifests", tmp_path / "state")
    assert source.update() == commits["second"]
    git(top, "branch", "-q", "-f", "main", commits["third"])
    assert source.update() == commits["third"]  # the loop has taken up the newer revision
    assert source.contained_revisions(commits["second"], frozenset({commits["third"]})) == frozenset()
    assert source.contained_revisions(commits["third"], frozenset({commits["second"]})) == {commits["second"]}
