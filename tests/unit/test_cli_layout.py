"""The command line's shape: every command dispatched through the table, the version single-sourced."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import reconciler
from reconciler.cli.main import handler, main
from reconciler.cli.parser import COMMANDS, build_parser
from tests.helpers import REPO

CLI = Path(reconciler.__file__).parent / "cli"


def subcommands() -> set[str]:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    return set(commands.choices)


def test_every_command_has_a_handler_and_every_handler_a_command():
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names)) and set(names) == subcommands()
    for name in names:
        assert callable(handler(name)), name


def test_version_is_reconciler_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"virt-reconcile {reconciler.__version__}\n"


def test_installed_metadata_carries_the_same_version():
    try:
        installed = metadata.version("virt-reconcile")
    except metadata.PackageNotFoundError:
        pytest.skip("virt-reconcile is not installed (only importable from the source tree)")
    assert installed == reconciler.__version__


def test_cli_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in CLI.rglob("*.py")}
    assert max(sizes.values()) <= 300, sizes


def test_validate_imports_only_what_it_needs():
    """Start-up time: validate loads no other command, no daemon, git, prometheus-client or libvirt."""
    code = (
        "import sys\n"
        "from reconciler.cli import main\n"
        f"assert main(['validate', {str(REPO / 'manifests')!r}]) == 0\n"
        "print('\\n'.join(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.splitlines())
    commands = {m for m in loaded if m.startswith("reconciler.cli.commands.")}
    assert commands == {"reconciler.cli.commands.validate"}
    unwanted = {
        "reconciler.daemon",
        "reconciler.adapters",
        "git",
        "prometheus_client",
        "libvirt",
        "rich.progress",
    }
    assert not loaded & unwanted, loaded & unwanted


def test_version_loads_no_command_and_no_model():
    code = "import sys\nfrom reconciler.cli import main\ntry: main(['--version'])\nexcept SystemExit: pass\n"
    code += "print('\\n'.join(sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.splitlines())
    assert not {
        m for m in loaded if m.startswith(("reconciler.cli.commands.", "reconciler.spec", "pydantic"))
    }
