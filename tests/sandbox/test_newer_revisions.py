"""An apply from a stale checkout never undoes what a newer revision applied: two clones of one
repository, the newer applied first; the older holds what the newer wrote (exit 1, the sandbox
untouched, the reason shown) until ``--overwrite-newer`` (sandbox host, the real CLI, real git)."""

from __future__ import annotations

import shutil

import pytest

from tests.daemon_helpers import git
from tests.helpers import cli, domain_yaml, host_yaml, write

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_a_stale_checkout_holds_what_a_newer_revision_applied(tmp_path):
    # A sandbox file lives inside its manifest tree: each checkout has its own (untracked), and
    # copying the bytes from one to the other makes them one host.
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    old, new = tmp_path / "old", tmp_path / "new"
    git(tmp_path, "clone", "-q", str(origin), str(old))
    write(old, "manifests/hosts.yaml", host_yaml(prune=True))
    write(old, ".gitignore", "state/\n")
    write(old, "manifests/web.yaml", domain_yaml("web", memory="1GiB"))
    git(old, "add", "-A")
    git(old, "commit", "-q", "-m", "first")
    git(old, "push", "-q", "origin", "HEAD:main")
    assert cli("apply", str(old / "manifests")).code == 0
    first = git(old, "rev-parse", "HEAD")

    git(tmp_path, "clone", "-q", str(origin), str(new))  # the newer commit: web grows, n is added
    shutil.copytree(old / "manifests" / "state", new / "manifests" / "state")
    write(new, "manifests/web.yaml", domain_yaml("web", memory="2GiB") + "---\n" + domain_yaml("n"))
    git(new, "commit", "-q", "-am", "second")
    second = git(new, "rev-parse", "HEAD")
    applied = cli("apply", str(new / "manifests"), "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    state = old / "manifests" / "state" / "hv1.xml"
    shutil.copyfile(new / "manifests" / "state" / "hv1.xml", state)
    before = state.read_bytes()
    assert f'revision="{second}"' in before.decode()

    stale = cli("apply", str(old / "manifests"), "--auto-approve")  # would shrink web and prune n
    assert stale.code == 1, stale.out + stale.err
    assert state.read_bytes() == before, "the stale apply changed the sandbox"
    for name in ("web", "n"):
        assert (
            f"held {name}: written by revision {second[:12]}, which this run's revision {first[:12]} "
            "does not contain (a newer commit, or another branch): pull it first, or apply --overwrite-newer"
        ) in " ".join(stale.out.split()), stale.out

    planned = cli("plan", str(old / "manifests"), "--overwrite-newer")
    assert planned.code == 2, planned.out + planned.err  # changes to make, nothing held
    assert "- undefine n" in planned.out and "~ update web" in planned.out and "held" not in planned.out
    assert state.read_bytes() == before
    forced = cli("apply", str(old / "manifests"), "--overwrite-newer", "--auto-approve")
    assert forced.code == 0, forced.out + forced.err
    after = state.read_text()
    assert "<name>n</name>" not in after and f'revision="{first}"' in after  # the rollback went ahead
    assert cli("apply", str(old / "manifests")).code == 0  # and the older checkout is at peace now
