"""Graphics and serial consoles: modelled, rendered and merged (the goldens in tests/golden/merge
show each merge); the graphics password comes from its file only when a definition is sent, so no
plan, saved plan, snapshot or log ever holds it."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import ValidationError

from reconciler.adapters.libvirt.seeds import read_password, with_file_passwords
from reconciler.engine.hypervisor import HostObservation
from reconciler.engine.plan import DesiredHost, Plan, build_host_plan
from reconciler.errors import PermanentHostError
from reconciler.libvirtxml.consoles import graphics_xml
from reconciler.libvirtxml.parse import parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.libvirtxml.secrets import keep_secrets
from reconciler.report import Printer, render_json, render_markdown, render_text
from reconciler.spec.consoles import Graphics
from reconciler.spec.models import Domain, DomainSpec, Owner
from tests.helpers import observed_domain

PASSWORD = "Zq9-pass"  # 8 characters: as long as a VNC password can be


def spec(**fields: object) -> DomainSpec:
    return DomainSpec.model_validate({"memory": "1GiB", **fields})


def test_the_model_takes_an_ip_to_listen_on_and_a_port_a_display_can_have():
    assert Graphics.model_validate({"type": "vnc"}) == Graphics(type="vnc", listen="127.0.0.1", port="auto")
    assert Graphics.model_validate({"type": "spice", "listen": "::1", "port": 5000}).port == 5000
    for wrong, why in (
        ({"type": "vnc", "listen": "localhost"}, "not an IP address"),
        ({"type": "vnc", "port": 5000}, "a VNC port is 5900 or above"),
        ({"type": "vnc", "passwordFile": "secrets/vnc"}, "String should match pattern"),
        ({"type": "vnc", "password": PASSWORD}, "Extra inputs are not permitted"),  # never in git
        ({"type": "rdp"}, "Input should be 'vnc' or 'spice'"),
    ):
        with pytest.raises(ValidationError, match=why):
            Graphics.model_validate(wrong)


def test_render_holds_no_password_and_parse_reads_the_password_file_from_our_ownership():
    desired = spec(graphics={"type": "vnc", "port": 5901, "passwordFile": "/etc/vr/web.vnc"}, serial=False)
    owner = Owner(manifest="web.yaml", graphics_password_file="/etc/vr/web.vnc")
    xml = render_domain("web", desired, owner)
    assert "passwd" not in xml and "<serial" not in xml and "<console" not in xml
    assert '<graphics type="vnc" port="5901" autoport=\'no\' listen="127.0.0.1">' in xml
    assert parse_domain(xml, state="running").spec == desired
    # A definition whose ownership names no file reads back without one (an unmanaged domain's VNC).
    assert parse_domain(render_domain("web", desired, None)).spec.graphics.password_file is None


def test_a_new_domain_gets_a_serial_console_unless_the_manifest_says_false():
    assert "<serial type='pty'/>" in render_domain("a", spec(), None)
    assert parse_domain(render_domain("a", spec(), None)).spec.serial is True
    assert "<serial" not in render_domain("a", spec(serial=False), None)


def test_graphics_listening_on_a_socket_is_not_modelled_and_left_alone():
    xml = render_domain("a", spec(), None).replace(
        "<memballoon",
        "<graphics type='vnc'><listen type='socket' socket='/run/a.sock'/></graphics>\n<memballoon",
    )
    assert parse_domain(xml).spec.graphics is None


def plan_with(password_file: str, live_file: str | None) -> Plan:
    """The plan for web: defined with its graphics if ``live_file`` is None, else observed with a
    definition written for ``live_file`` (changing nothing but the file changes the ownership)."""
    wanted = spec(graphics={"type": "vnc", "passwordFile": password_file})
    domain = Domain.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": "web"},
            "spec": wanted.model_dump(by_alias=True, mode="json"),
        }
    )
    observed = ()
    if live_file is not None:
        owner = Owner(manifest="web.yaml", graphics_password_file=live_file)
        observed = (observed_domain("web", owner, memory="1GiB", graphics={"type": "vnc"}),)
    host = DesiredHost(
        "hv1",
        "sandbox:/x",
        {"web": domain},
        lambda _: Owner(manifest="web.yaml", graphics_password_file=password_file),
    )
    return Plan(hosts={"hv1": build_host_plan(host, HostObservation(16, 64 * 2**30, observed))})


def test_plans_name_the_password_file_never_read_its_content(tmp_path):
    secret = tmp_path / "web.vnc"
    secret.write_text(PASSWORD + "\n")
    new = plan_with(str(secret), None)
    moved = plan_with(str(secret), "/etc/vr/old.vnc")
    [update] = moved.actions
    assert [(c.field, c.before, c.after) for c in update.changes] == [
        ("graphics.passwordFile", "/etc/vr/old.vnc", str(secret))
    ]
    assert update.restart  # the running guest has the old password until it restarts
    for plan in (new, moved):
        text = io.StringIO()
        render_text(plan, Printer(text, color=False))
        for output in (text.getvalue(), render_json(plan), render_markdown(plan), repr(plan)):
            assert PASSWORD not in output
            assert str(secret) in output
        assert all(PASSWORD not in (action.xml or "") for action in plan.actions)
    assert json.loads(render_json(new))["actions"][0]["changes"]  # the define shows its fields


def test_the_password_is_read_from_its_file_when_the_definition_is_sent(tmp_path):
    secret = tmp_path / "web.vnc"
    secret.write_text(PASSWORD + "\n")
    owner = Owner(manifest="web.yaml", graphics_password_file=str(secret))
    xml = render_domain("web", spec(graphics={"type": "vnc", "passwordFile": str(secret)}), owner)
    sent = with_file_passwords("hv1", xml)
    assert f'passwd="{PASSWORD}"' in sent
    plain = render_domain("web", spec(graphics={"type": "vnc"}), Owner(manifest="web.yaml"))
    assert with_file_passwords("hv1", plain) is plain  # no password file: the text as it was
    # The file's password wins over the one the current definition holds; without one, that is kept.
    old = sent.replace(PASSWORD, "old-one")
    assert keep_secrets(sent, old) == sent
    assert 'passwd="old-one"' in keep_secrets(plain, old)


@pytest.mark.parametrize(
    ("content", "kind", "why"),
    [
        ("", "vnc", "empty"),
        ("123456789", "vnc", "longer than the 8 characters a vnc password can be"),
        ("two\nlines", "spice", "holds a control character"),
        (None, "vnc", "cannot be read on this machine: No such file or directory"),
    ],
)
def test_a_password_file_that_cannot_be_used_is_named_and_its_content_never_shown(
    tmp_path, content, kind, why
):
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PermanentHostError, match=why) as info:
        read_password("hv1", str(path), kind)
    assert str(info.value).startswith(f"hv1: graphics passwordFile {path}: ")
    assert not content or content not in str(info.value)


def test_graphics_xml_writes_auto_and_fixed_ports():
    assert "port='-1' autoport='yes'" in graphics_xml(Graphics(type="spice"))
    assert "port=\"5999\" autoport='no'" in graphics_xml(Graphics(type="vnc", port=5999))
