"""The GitHub workflows parse and call only commands and options that exist."""

import re

import yaml

from reconciler.cli.main import build_parser
from tests.helpers import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def commands(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def test_ci_runs_lint_and_make_test():
    runs = "\n".join(commands(load("ci.yml")))
    assert "make lint" in runs and "make test" in runs
    triggers = load("ci.yml")[True]  # YAML 1.1 reads the key `on` as true
    assert "push" in triggers and "pull_request" in triggers


def test_plan_workflow_validates_plans_offline_and_fails_on_refusal():
    workflow = load("plan.yml")
    assert workflow[True]["pull_request"]["paths"] == ["manifests/**"]
    runs = "\n".join(commands(workflow))
    assert "virt-reconcile validate manifests/" in runs
    assert "virt-reconcile plan manifests/ --format markdown --state snapshots/" in runs
    assert re.search(r"3\) .*exit 1", runs)
    scripts = [
        s["with"]["script"]
        for s in workflow["jobs"]["plan"]["steps"]
        if "with" in s and "script" in s["with"]
    ]
    assert scripts and "<!-- virt-reconcile-plan -->" in scripts[0]


def test_every_virt_reconcile_invocation_parses():
    parser = build_parser()
    called = set()
    for name in ("ci.yml", "plan.yml"):
        for run in commands(load(name)):
            for line in run.splitlines():
                # a command line (``virt-reconcile ...`` or ``.venv/bin/virt-reconcile ...``), not the
                # prose of a pull-request comment written by the same script
                match = re.match(r"\s*(?:\S*/)?virt-reconcile (.*?)(?:\s*[>|]|$)", line)
                if match:
                    parser.parse_args(match.group(1).split())  # exits on an unknown command or option
                    called.add(match.group(1).split()[0])
    assert {"validate", "plan", "snapshot"} <= called
