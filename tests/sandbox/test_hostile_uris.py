"""Host URIs and sandbox state files from a pull request: nothing they name runs, is read past the
manifest root, or reaches a plan's output; only the operator widens what a URI may use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import cli, domain_yaml, write

SECRET = "root:$6$SECRET-HASH-NEVER-SHOWN:19000:0:99999:7:::"


def host(uri: str) -> str:
    return f"apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {{name: hv1}}\nspec:\n  uri: '{uri}'\n"


def payload(tmp_path: Path) -> tuple[Path, Path]:
    """A script that leaves a marker file when it runs, and that marker's path."""
    marker = tmp_path / "payload-ran"
    script = tmp_path / "payload.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    return script, marker


@pytest.mark.parametrize("driver", ["qemu", "test"])
def test_plan_never_runs_the_command_an_ext_uri_names(tmp_path: Path, driver: str):
    """``qemu+ext:///system?command=./payload.sh`` ran the script (as root, on a hypervisor) during plan."""
    script, marker = payload(tmp_path)
    root = tmp_path / "manifests"
    write(
        root,
        "h.yaml",
        host(f"{driver}+ext:///{'system' if driver == 'qemu' else 'default'}?command={script}"),
    )
    write(root, "d.yaml", domain_yaml("web"))
    result = cli("plan", str(root))
    assert not marker.exists(), "the payload ran"
    assert result.code == 1
    assert "h.yaml:5: spec.uri: transport 'ext' runs a command the URI names" in result.err


def test_uri_parameters_are_the_operators_to_allow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``?socket=``, ``?keyfile=``... passed validation from any manifest."""
    write(tmp_path, "h.yaml", host(f"test+unix:///default?socket={tmp_path}/libvirt-sock"))
    refused = cli("validate", str(tmp_path))
    assert refused.code == 1
    assert "h.yaml:5: spec.uri: query parameter 'socket' is refused" in refused.err
    monkeypatch.setenv("VIRT_RECONCILE_ALLOW_URI_PARAMS", "keyfile, socket")
    assert cli("validate", str(tmp_path)).code == 0


def test_the_command_line_options_name_what_the_operator_allows():
    from reconciler.cli.inputs import uri_rules
    from reconciler.cli.main import build_parser

    parser = build_parser()
    options = ["--allow-uri-param", "socket", "--allow-uri-param", "KeyFile", "--allow-uri-transport", "ext"]
    for command in ("validate", "plan", "apply", "snapshot --out x"):
        args = parser.parse_args([*command.split(), *options])
        rules = uri_rules(args)
        assert (rules.params, rules.transports) == ({"socket", "keyfile"}, {"ext"})


def test_a_sandbox_path_outside_the_manifest_root_is_never_opened(tmp_path: Path):
    """``sandbox:/etc/shadow`` was read, and apply would have replaced it with node XML."""
    outside = tmp_path / "shadow"
    outside.write_text(SECRET + "\n")
    root = tmp_path / "manifests"
    (root / "state").mkdir(parents=True)
    (root / "state" / "link.xml").symlink_to(outside)
    for uri in (f"sandbox:{outside}", "sandbox:../shadow", "sandbox:state/link.xml"):
        write(root, "h.yaml", host(uri))
        result = cli("apply", "--auto-approve", str(root))
        assert result.code == 1 and "h.yaml:5: spec.uri: the sandbox state file" in result.err
        assert SECRET not in result.out + result.err
    assert outside.read_text() == SECRET + "\n"


@pytest.mark.parametrize("output", ["text", "markdown", "json"])
def test_a_state_file_that_is_not_node_xml_is_never_quoted(tmp_path: Path, output: str):
    """libvirt's parse error quoted the first line of the file: it reached the plan, the pull
    request's comment, ``/status`` and the log."""
    write(tmp_path, "h.yaml", host("sandbox:state/hv1.xml"))
    write(tmp_path, "state/hv1.xml", SECRET + "\ndaemon:*:19000:0:99999:7:::\n")
    result = cli("plan", "--format", output, str(tmp_path))
    assert result.code == 1
    assert SECRET.split(":")[1] not in result.out + result.err
    assert "sandbox state file" in result.out and "is not XML (line 1, column 1)" in result.out
    if output == "json":
        json.loads(result.out)


def test_a_state_file_with_a_dtd_is_refused(tmp_path: Path):
    """A DTD's entities could pull another file in where the state is copied forward: today libvirt
    and lxml leave external entities alone, and a state file never needs a DTD, so none is taken."""
    outside = tmp_path / "secret.txt"
    outside.write_text(SECRET)
    root = tmp_path / "manifests"
    write(root, "h.yaml", host("sandbox:state/hv1.xml"))
    write(
        root,
        "state/hv1.xml",
        f'<!DOCTYPE node [<!ENTITY x SYSTEM "file://{outside}">]>\n'
        "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
        "<active>2</active><mhz>2000</mhz><model>x86_64</model></cpu><memory>4194304</memory>"
        "<extra>&x;</extra></node>\n",
    )
    result = cli("plan", str(root))
    assert result.code == 1
    assert "declares a DTD, which a sandbox state file never has" in result.out
    assert "SECRET-HASH" not in result.out + result.err


def test_the_reader_takes_only_a_regular_file_of_bounded_size(tmp_path: Path):
    """A device (``/dev/zero``) was read until memory ran out; ``/dev/null`` read as an empty host."""
    from reconciler.adapters import sandbox
    from reconciler.errors import PermanentHostError

    with pytest.raises(PermanentHostError, match="sandbox state file /dev/null is not a regular file"):
        sandbox.SandboxFile(Path("/dev/null"), "hv1").read()
    with pytest.raises(PermanentHostError, match="is not a regular file"):
        sandbox.SandboxFile(tmp_path, "hv1").read()
    huge = tmp_path / "huge.xml"
    with huge.open("wb") as file:
        file.truncate(64 * 1024**2 + 1)  # sparse: nothing is written, and nothing may be read
    with pytest.raises(PermanentHostError, match="is larger than 64 MiB"):
        sandbox.SandboxFile(huge, "hv1").read()
