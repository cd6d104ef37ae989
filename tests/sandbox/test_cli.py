"""The command line as a process: entry points, unreachable hosts, exit codes."""

import subprocess
import sys

from reconciler import __version__
from tests.helpers import REPO, cli, write


def test_python_dash_m_and_the_console_script():
    by_module = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(REPO / "manifests")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert by_module.returncode == 0, by_module.stderr
    assert "valid: 1 host(s), 4 domain(s)" in by_module.stdout
    script = REPO / ".venv" / "bin" / "virt-reconcile"
    if script.exists():
        shown = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
        assert (shown.returncode, shown.stdout) == (0, f"virt-reconcile {__version__}\n")


def test_unreachable_host_is_an_error_naming_it(tmp_path):
    write(
        tmp_path,
        "h.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: gone}\n"
        f"spec: {{uri: 'test://{tmp_path}/missing-node.xml'}}\n",
    )
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n",
    )
    result = cli("plan", str(tmp_path))
    assert result.code == 1
    assert "gone: cannot connect to test://" in result.out
    assert cli("apply", str(tmp_path)).code == 1


def test_any_libvirt_uri_works_as_a_host(tmp_path):
    write(
        tmp_path,
        "h.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: t}\n"
        "spec: {uri: 'test:///default', capacity: {cpus: 16, memory: 64GiB}}\n",
    )
    write(
        tmp_path,
        "d.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: a}\nspec: {memory: 1GiB}\n",
    )
    result = cli("plan", str(tmp_path))
    assert result.code == 2 and "+ define a" in result.out
    # test:///default holds an unmanaged domain called 'test': never an orphan, never touched.
    assert "orphan" not in result.out
