"""The only module that uses git (GitPython): the manifests' revision, and a clone the daemon follows."""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import SourceError


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


def root_identity(folder: Path) -> str:
    """Which manifest root ``folder`` is, the same from every clone: ``git:REPO:PATH`` (the
    repository's name from its origin URL, or its folder's, and the folder's path in it), or
    ``dir:ABSOLUTE_PATH`` outside git. Ownership records it, so only a plan of this same root may
    undefine what it defined: not a subfolder, not another repository's manifests.
    """
    import git

    folder = folder.resolve()
    try:
        repo = git.Repo(folder, search_parent_directories=True)
        top = Path(repo.working_tree_dir or folder).resolve()
        urls = [remote.url for remote in repo.remotes if remote.name == "origin"]
        name = (urls[0] if urls else str(top)).rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        relative = folder.relative_to(top).as_posix()
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return f"dir:{folder}"
    return f"git:{name.removesuffix('.git')}:{relative}"


class GitCheckout:
    """A clone of ``url`` in ``directory`` that follows ``branch``: fetch, then reset to its tip."""

    def __init__(self, url: str, branch: str, directory: Path) -> None:
        self.url, self.branch, self.directory = url, branch, directory

    def update(self) -> str:
        """Clone or fetch, check out the branch's newest commit, and return its SHA.

        The work tree is replaced only by a complete fetch: when the remote is unreachable the
        previous checkout (the last good revision) stays as it was.
        """
        import git

        try:
            if (self.directory / ".git").is_dir():
                repo = git.Repo(self.directory)
                repo.remotes.origin.set_url(self.url)
                repo.remotes.origin.fetch(self.branch, prune=True)
            else:
                self.directory.parent.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.clone_from(self.url, self.directory, branch=self.branch, depth=50)
            commit = repo.commit(f"origin/{self.branch}")
            repo.head.reset(commit, index=True, working_tree=True)
            return str(commit.hexsha)
        except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            raise SourceError(f"git {self.url} ({self.branch}): {' '.join(str(detail).split())}") from err
