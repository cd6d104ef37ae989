"""The only module that uses git (GitPython): which revision the manifests come from."""

from __future__ import annotations

from pathlib import Path


def revision_of(path: Path) -> str:
    """The commit the manifests at ``path`` come from, ``+dirty`` with local edits; '' outside git."""
    import git  # imported here: GitPython costs start-up time that validate and schema never need

    try:
        repo = git.Repo(path, search_parent_directories=True)
        sha = repo.head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return ""
    try:
        relative = str(path.resolve().relative_to(Path(repo.working_tree_dir or path).resolve()))
        dirty = repo.is_dirty(untracked_files=True, path=relative)
    except (git.GitCommandError, ValueError):
        dirty = False
    return sha + ("+dirty" if dirty else "")
