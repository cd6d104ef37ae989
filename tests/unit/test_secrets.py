"""keep_secrets: a redefine made from XML read without secrets puts the current ones back."""

from __future__ import annotations

from lxml import etree

from reconciler.libvirtxml.secrets import defined_name, keep_secrets


def domain(devices: str, name: str = "web") -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='KiB'>1048576</memory>
  <devices>
{devices}
  </devices>
</domain>"""


def graphics(xml: str) -> list[dict[str, str]]:
    return [dict(g.attrib) for g in etree.fromstring(xml.encode()).iterfind("devices/graphics")]


SECURE = domain(
    """    <graphics type='vnc' port='-1' passwd='vnc-one' passwdValidTo='2031-01-01T00:00:00'/>
    <graphics type='spice' passwd='spice-one'/>
    <graphics type='vnc' port='5901' passwd='vnc-two'/>"""
)


def test_passwords_go_back_by_graphics_type_and_rank():
    insecure = domain(
        """    <graphics type='spice'/>
    <graphics type='vnc' port='-1' passwdValidTo='2031-01-01T00:00:00'/>
    <graphics type='vnc' port='5901'/>"""
    )
    kept = graphics(keep_secrets(insecure, SECURE))
    assert kept == [
        {"type": "spice", "passwd": "spice-one"},
        {"type": "vnc", "port": "-1", "passwdValidTo": "2031-01-01T00:00:00", "passwd": "vnc-one"},
        {"type": "vnc", "port": "5901", "passwd": "vnc-two"},
    ]


def test_an_expiry_comes_back_with_its_password():
    kept = graphics(keep_secrets(domain("    <graphics type='vnc' port='-1'/>"), SECURE))
    assert kept == [
        {"type": "vnc", "port": "-1", "passwd": "vnc-one", "passwdValidTo": "2031-01-01T00:00:00"}
    ]


def test_a_password_the_new_xml_sets_wins_and_extra_graphics_get_none():
    new = domain(
        """    <graphics type='vnc' passwd='changed'/>
    <graphics type='vnc'/>
    <graphics type='vnc'/>
    <graphics type='rdp'/>"""
    )
    kept = graphics(keep_secrets(new, SECURE))
    assert [g.get("passwd") for g in kept] == ["changed", "vnc-two", None, None]
    assert kept[0].get("passwdValidTo") is None, "an expiry belongs to the password it came with"


def test_nothing_to_keep_returns_the_new_xml_untouched():
    new = domain("    <graphics type='vnc'/>") + "\n<!-- kept as written -->"
    assert keep_secrets(new, domain("    <graphics type='vnc'/>")) == new
    assert keep_secrets(new, domain("")) == new


def test_network_disk_cookies_go_back_to_the_same_disk_and_source():
    cookies = "<cookies><cookie name='session'>c00kie</cookie></cookies>"
    secure = domain(
        f"""    <disk type='network' device='disk'>
      <source protocol='https' name='images/a.qcow2'><host name='h'/>{cookies}</source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='https' name='images/b.qcow2'><host name='h'/>{cookies}</source>
      <target dev='vdb' bus='virtio'/>
    </disk>"""
    )
    new = domain(
        """    <disk type='network' device='disk'>
      <source protocol='https' name='images/a.qcow2'><host name='h'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='https' name='images/other.qcow2'><host name='h'/></source>
      <target dev='vdb' bus='virtio'/>
    </disk>"""
    )
    root = etree.fromstring(keep_secrets(new, secure).encode())
    sources = {d.find("target").get("dev"): d.find("source") for d in root.iterfind("devices/disk")}
    assert sources["vda"].findtext("cookies/cookie") == "c00kie"
    assert sources["vdb"].find("cookies") is None, "another image: its cookies are not this one's"


def test_defined_name():
    assert defined_name(domain("")) == "web"
    assert defined_name("<domain><name>") is None
    assert defined_name("<network><name>n</name></network>") is None
    assert defined_name("<domain type='kvm'/>") is None
