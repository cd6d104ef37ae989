"""The command line's shape: every command dispatched through the table, the version single-sourced."""

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import reconciler
from reconciler.cli.main import handler, main, parse
from reconciler.cli.parser import COMMANDS, build_parser, command_named
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


def test_a_run_builds_only_its_own_command_s_arguments():
    """main builds the arguments of the command it runs only; the parse is the same as with all."""
    argv = ["plan", "manifests", "--format", "json", "--host", "hv1", "--selector", "role=web"]
    assert command_named(argv) == "plan" and command_named(["--version"]) == command_named([]) == ""
    assert parse(build_parser(only="plan"), argv) == parse(build_parser(), argv)
    [commands] = [a for a in build_parser(only="plan")._actions if a.dest == "command"]
    assert set(commands.choices) == subcommands()  # every command still listed (--help, usage errors)
    assert not [a for a in commands.choices["apply"]._actions if a.dest != "help"]


def test_version_is_reconciler_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"virt-reconcile {reconciler.__version__}\n"


def test_ctrl_c_exits_130_saying_interrupted_without_a_traceback(monkeypatch, capsys):
    from reconciler.cli.commands import validate

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "run", interrupted)
    assert main(["validate", str(REPO / "manifests")]) == 130
    assert capsys.readouterr().err == "interrupted: the next run plans from what it finds\n"


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


def modules_loaded_by(args: list[str], cache: Path, **environ: str) -> set[str]:
    """The modules a fresh interpreter holds after running the CLI with ``args`` (exit 0 or 2), with
    ``environ`` added to this process's environment."""
    code = (
        "import sys\n"
        "from reconciler.cli import main\n"
        f"assert main({args!r}) in (0, 2)\n"
        "sys.stderr.write('\\n'.join(sys.modules))\n"
    )
    env = {**os.environ, "VIRT_RECONCILE_CACHE_DIR": str(cache), "NO_COLOR": "1", **environ}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return set(result.stderr.splitlines())


def loaded_from(loaded: set[str], packages: set[str]) -> set[str]:
    """The modules of ``loaded`` that are one of ``packages`` or inside one."""
    return {module for module in loaded if any(module == p or module.startswith(p + ".") for p in packages)}


def test_validate_loads_no_xml_engine_renderer_or_colour(tmp_path):
    """Start-up time: validate loads the models and prints one line, nothing that plans or renders."""
    loaded = modules_loaded_by(["validate", str(REPO / "manifests")], tmp_path / "cache")
    heavy = {
        "lxml",  # domain XML: libvirtxml
        "rich",  # colour, only on a terminal
        "reconciler.engine",
        "reconciler.libvirtxml",
        "reconciler.offline",
        "reconciler.ops",
        "reconciler.report.text",  # the plan renderers (and the engine they read)
        "reconciler.report.json_doc",
        "reconciler.report.markdown",
        "reconciler.spec.messages",  # and difflib: only for invalid manifests
        "difflib",
        "xml.sax",  # urllib.request, http.client, ssl
        "http",
    }
    assert not loaded_from(loaded, heavy)
    assert {"reconciler.spec.models", "reconciler.report.printer"} <= loaded


def test_models_are_built_without_looking_for_pydantic_plugins(tmp_path, monkeypatch):
    """Start-up time: pydantic's plugin discovery (importlib.metadata, and every installed
    distribution's entry points read) is skipped; its own switch, PYDANTIC_DISABLE_PLUGINS, set even
    empty, brings pydantic's loader back."""
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    args = ["validate", str(REPO / "manifests")]
    assert "importlib.metadata" not in modules_loaded_by(args, tmp_path / "cache")
    assert "importlib.metadata" in modules_loaded_by(args, tmp_path / "cache", PYDANTIC_DISABLE_PLUGINS="")


def test_validate_of_unchanged_manifests_loads_no_yaml_parser(tmp_path):
    """Manifests whose parse the cache holds are loaded without PyYAML (parsed ones do load it)."""
    args = ["validate", str(REPO / "manifests")]
    assert loaded_from(modules_loaded_by(args, tmp_path / "cache"), {"yaml"})  # the first run parses
    assert not loaded_from(modules_loaded_by(args, tmp_path / "cache"), {"yaml", "reconciler.spec.yamltree"})


def test_plan_as_text_loads_neither_colour_nor_the_other_formats(tmp_path):
    """plan does its work (libvirt, the engine, the text renderer) and loads no other format."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests", ignore=shutil.ignore_patterns("state"))
    loaded = modules_loaded_by(["plan", str(tmp_path / "manifests")], tmp_path / "cache")
    assert {"libvirt", "reconciler.engine.reconcile", "reconciler.report.text"} <= loaded
    unwanted = {"rich", "reconciler.report.json_doc", "reconciler.report.markdown", "reconciler.offline"}
    assert not loaded_from(loaded, unwanted | {"reconciler.daemon", "prometheus_client", "watchfiles"})


def test_version_loads_no_command_and_no_model():
    code = "import sys\nfrom reconciler.cli import main\ntry: main(['--version'])\nexcept SystemExit: pass\n"
    code += "print('\\n'.join(sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.splitlines())
    assert not {
        m for m in loaded if m.startswith(("reconciler.cli.commands.", "reconciler.spec", "pydantic"))
    }
