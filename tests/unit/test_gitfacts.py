"""The revision and root identity asked of git's command line agree with GitPython's in every state
a manifest checkout can be in; where git refuses to answer, so do we, saying why."""

import os
import shutil
import subprocess
from pathlib import Path

import git as gitpython
import pytest

from reconciler.adapters.gitfacts import GitFacts
from reconciler.adapters.gitsource import root_identity
from reconciler.errors import GitRefusedError
from tests.daemon_helpers import git

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def checkout(tmp_path: Path, *, origin: str | None = "git@github.com:team-a/infra.git") -> Path:
    """A repository with a committed manifests folder and a file beside it."""
    top = tmp_path / "infra"
    (top / "manifests").mkdir(parents=True)
    git(top, "init", "-q")
    if origin:
        git(top, "remote", "add", "origin", origin)
    (top / "manifests" / "web.yaml").write_text("kind: Domain\n")
    (top / "README").write_text("infra\n")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "first")
    return top


def revision_of(folder: Path) -> str:
    """GitPython's answer (what the CLI used before): HEAD, ``+dirty`` with edits below ``folder``."""
    try:
        repo = gitpython.Repo(folder, search_parent_directories=True)
        sha = repo.head.commit.hexsha
    except (gitpython.InvalidGitRepositoryError, gitpython.NoSuchPathError, ValueError):
        return ""
    relative = str(folder.resolve().relative_to(Path(repo.working_tree_dir or folder).resolve()))
    return sha + ("+dirty" if repo.is_dirty(untracked_files=True, path=relative) else "")


def agree(folder: Path) -> tuple[str, str]:
    """GitFacts' answers, once they are GitPython's."""
    facts = GitFacts(folder)
    answers = (facts.revision(), facts.root_identity())
    assert answers == (revision_of(folder), root_identity(folder))
    return answers


def test_a_clean_checkout_is_its_commit_and_its_origin(tmp_path):
    top = checkout(tmp_path)
    assert agree(top / "manifests") == (
        git(top, "rev-parse", "HEAD"),
        "git:github.com/team-a/infra:manifests",
    )


def test_local_edits_below_the_folder_make_it_dirty_and_edits_beside_it_do_not(tmp_path):
    top = checkout(tmp_path)
    head = git(top, "rev-parse", "HEAD")
    (top / "README").write_text("changed\n")
    (top / "notes.txt").write_text("untracked, outside the manifests\n")
    assert agree(top / "manifests")[0] == head
    (top / "manifests" / "db.yaml").write_text("kind: Domain\n")  # untracked, inside
    assert agree(top / "manifests")[0] == head + "+dirty"
    git(top, "add", "manifests/db.yaml")  # staged
    assert agree(top / "manifests")[0] == head + "+dirty"
    git(top, "commit", "-q", "-m", "db")
    (top / "manifests" / "web.yaml").write_text("kind: Host\n")  # a tracked file changed
    assert agree(top / "manifests")[0] == git(top, "rev-parse", "HEAD") + "+dirty"


def test_a_subfolder_a_repository_without_origin_and_one_without_commits(tmp_path):
    top = checkout(tmp_path / "a", origin=None)
    (top / "manifests" / "team-x").mkdir()
    revision, identity = agree(top / "manifests" / "team-x")
    assert identity == f"git:{top.resolve()}:manifests/team-x" and revision
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    assert agree(empty) == ("", f"git:{empty.resolve()}:.")


def test_outside_git(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-plain"
    outside.mkdir()
    try:
        assert agree(outside) == ("", f"dir:{outside.resolve()}")
    finally:
        outside.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a checkout another user's takes root")
def test_a_checkout_owned_by_another_user_is_refused_as_git_refuses_it(tmp_path):
    """git will not work in a repository another user owns (its config could run commands as us):
    neither do we, with git's own words and what to do (GitPython failed there on a broken pipe)."""
    top = checkout(tmp_path)
    subprocess.run(["chown", "-R", "nobody", str(top)], check=True)
    facts = GitFacts(top / "manifests")
    for answer in (facts.revision, facts.root_identity):
        with pytest.raises(GitRefusedError, match=r"dubious ownership.*as the checkout's owner"):
            answer()


def test_a_checkout_without_git_installed_is_refused_and_a_plain_folder_needs_no_git(tmp_path, monkeypatch):
    top = checkout(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    with pytest.raises(GitRefusedError, match="git is not installed"):
        GitFacts(top / "manifests").revision()
    facts = GitFacts(plain)
    assert (facts.revision(), facts.root_identity()) == ("", f"dir:{plain.resolve()}")


def test_a_folder_that_went_away_is_outside_git(tmp_path):
    gone = tmp_path / "gone"
    facts = GitFacts(gone)
    assert (facts.revision(), facts.root_identity()) == ("", f"dir:{gone.resolve()}")
    assert revision_of(gone) == ""


def test_git_variables_of_a_hook_do_not_point_git_at_another_repository(tmp_path, monkeypatch):
    """An apply run from a git hook inherits GIT_DIR, GIT_INDEX_FILE...: the revision and root are
    still the manifest folder's own, and another user's checkout is still refused."""
    top = checkout(tmp_path / "mine")
    other = checkout(tmp_path / "other", origin="git@github.com:team-b/other.git")
    (other / "manifests" / "extra.yaml").write_text("kind: Domain\n")  # the other one is dirty
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other / ".git" / "index"))
    facts = GitFacts(top / "manifests")
    assert facts.revision() == git(top, "--git-dir", str(top / ".git"), "rev-parse", "HEAD")
    assert facts.root_identity() == "git:github.com/team-a/infra:manifests"


def test_a_file_name_that_is_not_utf8_makes_the_folder_dirty_and_nothing_else(tmp_path):
    top = checkout(tmp_path)
    head = git(top, "rev-parse", "HEAD")
    (top / "manifests" / os.fsdecode(b"caf\xe9.yaml")).write_text("kind: Domain\n")
    assert GitFacts(top / "manifests").revision() == head + "+dirty"
