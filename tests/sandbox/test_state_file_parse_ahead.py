"""A large sandbox state file has its domains parsed while libvirt loads it: the XML read off the file
is what libvirt then reports, and the plan finds every parse made."""

from __future__ import annotations

import threading
from pathlib import Path

import libvirt

from reconciler.adapters import sandbox
from reconciler.adapters.libvirt.host import LibvirtHypervisor
from reconciler.libvirtxml import parse as domxml
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec, Owner

OWNER = Owner(manifest="vms/a.yaml", revision="abc", spec_hash="0123456789abcdef", root="dir:/m", host="hv1")
GRAPHICS = "<graphics type='vnc' port='-1' passwd='secret-one'/>"


def saved_sandbox(state: Path, count: int) -> None:
    """A state file of ``count`` domains saved as the sandbox saves it: every third stopped, the first
    with a VNC password (written to the file, never reported)."""
    node = state.with_name("node.xml")
    node.write_text(sandbox.new_node_xml(64, 1024**4))
    conn = libvirt.open(f"test://{node}")
    try:
        spec = DomainSpec.model_validate(
            {"memory": "1GiB", "vcpus": 2, "interfaces": [{"network": "default"}]}
        )
        for index in range(count):
            xml = render_domain(f"vm{index:03d}", spec, OWNER)
            if index == 0:
                xml = xml.replace("<serial type='pty'/>", GRAPHICS + "<serial type='pty'/>")
            dom = conn.defineXML(xml)
            if index % 3:
                dom.create()
        domains = LibvirtHypervisor("hv1", conn, in_process=True).sandbox_domains()
        state.write_text(sandbox.compose_node_xml(node.read_text(), domains))
    finally:
        conn.close()


def reported(state: Path) -> dict[str, str]:
    """What libvirt reports for each domain of a state file (inactive XML, no secure values)."""
    conn = libvirt.open(f"test://{state}")
    try:
        return {dom.name(): dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for dom in conn.listAllDomains()}
    finally:
        conn.close()


def test_the_xml_read_off_the_file_is_what_libvirt_reports(tmp_path: Path):
    state = tmp_path / "hv1.xml"
    saved_sandbox(state, 12)
    guessed = {domxml.parse_domain(xml).name: xml for xml in sandbox.reported_xmls(state.read_text())}
    actual = reported(state)
    assert guessed.keys() == actual.keys()
    assert {name for name in actual if guessed[name] != actual[name]} == {"vm000"}
    assert "secret-one" in guessed["vm000"] and "secret-one" not in actual["vm000"]


def test_a_large_file_is_parsed_ahead_while_libvirt_loads_it(tmp_path: Path):
    state = tmp_path / "hv1.xml"
    saved_sandbox(state, sandbox.PARSE_AHEAD_MIN_DOMAINS)
    domxml.forget_parsed()
    text = sandbox.SandboxFile(state).read()
    assert text is not None
    for thread in parse_threads():
        thread.join(timeout=30)
    actual = reported(state)
    assert set(actual.values()) - {actual["vm000"]} <= set(domxml._PARSED)
    assert sandbox.autostart_names(text) == set()


def parse_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "vr-sandbox-parse"]


def test_a_small_file_is_not(tmp_path: Path):
    state = tmp_path / "hv1.xml"
    saved_sandbox(state, 3)
    for thread in parse_threads():  # one an earlier test started
        thread.join(timeout=30)
    domxml.forget_parsed()
    assert sandbox.SandboxFile(state).read() is not None
    assert not parse_threads()
    assert not domxml._PARSED
