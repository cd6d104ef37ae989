"""The package as users get it: `python -m build`, then the wheel alone in a fresh virtualenv.

Slow-ish (a few seconds with pip's cache warm; ~30 s more when libvirt-python must be built from
source): it builds the sdist, the wheel from the sdist, and installs the wheel with its dependencies
into a virtualenv that sees nothing of this one, so a missing dependency or package-data file fails
here rather than on a user's machine. Needs PyPI or pip's cache (setuptools for the build, the
dependencies for the install) and libvirt's headers, as `make setup` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import reconciler
from tests.helpers import REPO

TIMEOUT = 900


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        timeout=TIMEOUT,
    )


def test_the_wheel_installs_alone_and_validates_and_plans(tmp_path):
    dist = tmp_path / "dist"
    built = run(sys.executable, "-m", "build", "--outdir", dist, REPO)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = dist.glob("*.whl")
    assert len(list(dist.glob("*.tar.gz"))) == 1
    version = reconciler.__version__
    assert wheel.name.startswith(f"virt_reconcile-{version}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "reconciler/ops/templates/plan.yml" in names and "reconciler/ops/templates/gitignore" in names
    assert not [name for name in names if name.startswith("tests/")]

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    python = venv / "bin" / "python"
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    script = venv / "bin" / "virt-reconcile"

    work = tmp_path / "work"
    shutil.copytree(REPO / "manifests", work / "manifests", ignore=shutil.ignore_patterns("state"))
    where = run(python, "-c", "import reconciler; print(reconciler.__file__)", cwd=work)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # not this checkout

    shown = run(script, "--version", cwd=work)
    assert (shown.returncode, shown.stdout) == (0, f"virt-reconcile {version}\n"), shown.stderr
    validated = run(script, "validate", "manifests", cwd=work)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    planned = run(script, "plan", "manifests", cwd=work)
    assert planned.returncode == 2, planned.stdout + planned.stderr  # 2: changes to make

    created = run(script, "init", "repo", cwd=work)  # the templates are package data
    assert created.returncode == 0, created.stdout + created.stderr
    assert run(script, "validate", "repo", cwd=work).returncode == 0
