"""The identity of a manifest root: the same from every clone, different for every repository."""

import subprocess
from pathlib import Path

import pytest

from reconciler.adapters.gitsource import repository_name, root_identity


@pytest.mark.parametrize(
    "url",
    [
        "git@github.com:team-a/infra.git",
        "ssh://git@GitHub.com:22/team-a/infra",
        "https://github.com/team-a/infra.git",
        "https://user:secret@github.com/team-a/infra/",
    ],
)
def test_every_way_to_one_repository_names_it_alike(url):
    assert repository_name(url) == "github.com/team-a/infra"


def test_local_repositories_are_named_by_their_path():
    assert (
        repository_name("/srv/git/infra.git")
        == repository_name("file:///srv/git/infra.git")
        == "/srv/git/infra"
    )


def clone_with_origin(folder: Path, origin: str) -> Path:
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "remote", "add", "origin", origin], check=True)
    (folder / "manifests").mkdir()
    return folder / "manifests"


def test_two_repositories_of_one_name_are_two_roots(tmp_path):
    a = root_identity(clone_with_origin(tmp_path / "a" / "infra", "git@github.com:team-a/infra.git"))
    b = root_identity(clone_with_origin(tmp_path / "b" / "infra", "git@github.com:team-b/infra.git"))
    assert a == "git:github.com/team-a/infra:manifests" and b == "git:github.com/team-b/infra:manifests"
    other_clone = clone_with_origin(tmp_path / "c", "https://github.com/team-a/infra")
    assert root_identity(other_clone) == a  # where the clone lives does not matter


def test_a_subfolder_and_a_folder_outside_git(tmp_path):
    manifests = clone_with_origin(tmp_path / "infra", "git@github.com:team-a/infra.git")
    (manifests / "team-x").mkdir()
    assert root_identity(manifests / "team-x") == "git:github.com/team-a/infra:manifests/team-x"
    outside = tmp_path.parent / f"{tmp_path.name}-plain"
    outside.mkdir()
    assert root_identity(outside) == f"dir:{outside.resolve()}"
