"""Domain XML: render/parse round trips, merges that keep every unmodelled element."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from reconciler.engine.diff import normalise, spec_changes
from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.ownership import owner_xml
from reconciler.libvirtxml.parse import parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec, Owner
from tests.helpers import shared_domain_files

OWNER = Owner(manifest="vms/web.yaml", revision="abc123", spec_hash="0123456789abcdef")


def canonical(xml: str) -> bytes:
    """XML in canonical form with insignificant whitespace removed: equal means the same document."""
    root = etree.fromstring(xml.encode(), etree.XMLParser(remove_blank_text=True))
    for element in root.iter():
        if element.text is not None and not element.text.strip():
            element.text = None
        element.tail = None
    return etree.tostring(root, method="c14n")


def spec(**fields):
    return DomainSpec.model_validate({"memory": "2GiB", **fields})


sizes_mib = st.integers(min_value=1, max_value=64 * 1024)


@st.composite
def specs(draw):
    memory = draw(sizes_mib)
    disks = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "path": st.sampled_from(["/var/lib/libvirt/images/a.qcow2", "/dev/vg0/b", "/srv/c.img"]),
                    "format": st.sampled_from(["qcow2", "raw"]),
                    "bus": st.sampled_from(["virtio", "sata", "scsi", "ide"]),
                }
            ),
            max_size=3,
        )
    )
    nics = draw(
        st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"network": st.sampled_from(["default", "lan"])},
                    optional={"model": st.sampled_from(["virtio", "e1000", None])},
                ),
                st.fixed_dictionaries(
                    {"bridge": st.just("br0")}, optional={"mac": st.just("52:54:00:00:00:01")}
                ),
            ),
            max_size=2,
        )
    )
    return DomainSpec.model_validate(
        {
            "vcpus": draw(st.integers(min_value=1, max_value=64)),
            "memory": f"{memory}MiB",
            "currentMemory": f"{draw(st.integers(min_value=1, max_value=memory))}MiB",
            "type": draw(st.sampled_from(["kvm", "qemu"])),
            "machine": draw(st.sampled_from([None, "q35", "pc-i440fx-7.2"])),
            "boot": draw(
                st.sampled_from(
                    [{}, {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd", "cmdline": "console=ttyS0"}]
                )
            ),
            "disks": disks,
            "interfaces": nics,
            "balloon": draw(st.sampled_from(["virtio", "none"])),
            # null (the default) leaves an existing console alone: only true or false read back as set
            "serial": draw(st.booleans()),
            "graphics": draw(
                st.sampled_from([None, {"type": "vnc"}, {"type": "spice", "listen": "0.0.0.0", "port": 5930}])
            ),
            "cloudInit": draw(st.sampled_from([None, {"pool": "images"}])),  # files are input, not state
        }
    )


@given(specs())
@settings(max_examples=150)
def test_render_then_parse_gives_the_same_spec(desired):
    parsed = parse_domain(
        render_domain("vm", desired, OWNER), state=desired.state, autostart=desired.autostart
    )
    assert parsed.spec == desired
    assert parsed.owner == OWNER
    assert parsed.name == "vm"


@given(specs(), specs())
@settings(max_examples=150)
def test_merge_reaches_any_spec_from_any_spec(before, after):
    xml = render_domain("vm", before, OWNER)
    # What the manifest leaves open (machine: null, no MAC) keeps the observed value, as in a plan.
    desired = normalise(after, parse_domain(xml, state=after.state, autostart=after.autostart).spec)
    merged = parse_domain(merge_domain(xml, desired, OWNER), state=after.state, autostart=after.autostart)
    assert spec_changes(merged.spec, desired) == ()  # disks compare by target, not by position


def test_merge_keeps_unmodelled_elements_and_addresses():
    xml = """<domain type='kvm'>
  <name>vm</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/img/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <graphics type='vnc' port='-1' autoport='yes' passwd='secret'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>"""
    parsed = parse_domain(xml)
    merged = merge_domain(xml, parsed.spec.model_copy(update={"vcpus": 4}), None)
    root = etree.fromstring(merged.encode())
    assert root.findtext("vcpu") == "4"
    assert root.find("devices/graphics").get("passwd") == "secret"
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("devices/disk/address").get("bus") == "0x04"
    assert root.find("devices/disk/driver").get("cache") == "none"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:6b:3c:58"
    assert root.findtext("uuid") == "c7a5fdbd-edaf-9455-926a-d65c16db1809"


def test_bus_change_drops_the_old_address_only():
    xml = render_domain("vm", spec(disks=[{"path": "/a.qcow2", "target": "vda"}]), None)
    root = etree.fromstring(xml.encode())
    root.find("devices/disk").append(etree.fromstring("<address type='pci' bus='0x04'/>"))
    root.find("devices/disk").append(etree.fromstring("<serial>abc</serial>"))
    xml = etree.tostring(root, encoding="unicode")
    desired = spec(disks=[{"path": "/a.qcow2", "target": "vda", "bus": "sata"}])
    disk = etree.fromstring(merge_domain(xml, desired, None).encode()).find("devices/disk")
    assert disk.find("address") is None
    assert disk.findtext("serial") == "abc"
    assert disk.find("target").get("bus") == "sata"


def test_vcpu_change_fixes_topology_and_drops_per_vcpu_entries():
    xml = """<domain type='kvm'><name>vm</name><memory>1048576</memory>
      <vcpu placement='static' current='2'>4</vcpu>
      <vcpus><vcpu id='0' enabled='yes'/><vcpu id='1' enabled='yes'/><vcpu id='2' enabled='no'/>
      <vcpu id='3' enabled='no'/></vcpus>
      <os><type arch='x86_64'>hvm</type></os>
      <cpu><topology sockets='2' dies='1' cores='2' threads='1'/></cpu></domain>"""
    root = etree.fromstring(
        merge_domain(xml, parse_domain(xml).spec.model_copy(update={"vcpus": 6}), None).encode()
    )
    assert root.findtext("vcpu") == "6"
    assert root.find("vcpu").get("current") is None
    assert root.find("vcpus") is None
    assert root.find("cpu/topology").get("sockets") == "3"


def test_owner_metadata_is_namespaced():
    xml = render_domain("vm", spec(), OWNER)
    assert 'xmlns:vr="https://virt-reconcile.dev/xmlns/owner/v1"' in xml
    assert 'manifest="vms/web.yaml"' in owner_xml(OWNER)
    other = merge_domain(xml, spec(), OWNER.model_copy(update={"revision": "def456"}))
    assert parse_domain(other).owner.revision == "def456"


def test_foreign_metadata_is_kept_with_its_prefix():
    xml = (
        "<domain type='kvm'><name>vm</name><metadata><libosinfo:libosinfo "
        "xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'><libosinfo:os id='x'/>"
        "</libosinfo:libosinfo></metadata><memory>1048576</memory><os><type>hvm</type></os></domain>"
    )
    merged = merge_domain(xml, parse_domain(xml).spec, OWNER)
    assert '<libosinfo:os id="x"/>' in merged
    assert parse_domain(merged).owner == OWNER


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<domain", "not well-formed"),
        ("<network><name>x</name></network>", "expected a <domain>"),
        ("<domain type='kvm'><memory>1</memory></domain>", "no <name>"),
        ("<domain type='kvm'><name>x</name></domain>", "no <memory>"),
        ("<domain type='xen'><name>x</name><memory>1024</memory></domain>", "domain 'x'"),
    ],
)
def test_unreadable_xml(xml, message):
    with pytest.raises(DomainXMLError, match=message):
        parse_domain(xml)


# ------------------------------------------------------- real-world XML from libvirt's test suite


def corpus():
    return [pytest.param(path, id=path.name) for path in shared_domain_files()]


def pytest_generate_tests(metafunc):
    if "corpus_file" in metafunc.fixturenames:
        from tests.helpers import SHARED_DOMAINS

        files = sorted(SHARED_DOMAINS.glob("*.xml")) if SHARED_DOMAINS.is_dir() else []
        metafunc.parametrize("corpus_file", files or [None], ids=[f.name for f in files] or ["absent"])


def _corpus_xml(corpus_file) -> str:
    if corpus_file is None:
        shared_domain_files()  # skips with the reason
    return corpus_file.read_text()


def test_corpus_parses_and_noop_merge_is_identical(corpus_file):
    xml = _corpus_xml(corpus_file)
    parsed = parse_domain(xml)
    assert canonical(merge_domain(xml, parsed.spec, parsed.owner)) == canonical(xml)


def _differences(before: str, after: str) -> set[str]:
    """Paths of elements whose own text or attributes differ (same structure assumed)."""
    a = etree.fromstring(before.encode(), etree.XMLParser(remove_blank_text=True))
    b = etree.fromstring(after.encode(), etree.XMLParser(remove_blank_text=True))
    tree = a.getroottree()
    assert [e.tag for e in a.iter()] == [e.tag for e in b.iter()], "element structure changed"
    return {
        tree.getpath(x)
        for x, y in zip(a.iter(), b.iter(), strict=True)
        if (x.text or "").strip() != (y.text or "").strip() or dict(x.attrib) != dict(y.attrib)
    }


def test_corpus_memory_change_alters_only_memory(corpus_file):
    xml = _corpus_xml(corpus_file)
    parsed = parse_domain(xml)
    desired = parsed.spec.model_copy(update={"memory": parsed.spec.memory + 1024**3})
    cells = etree.fromstring(xml.encode()).findall("cpu/numa/cell")
    if len(cells) > 1:
        with pytest.raises(DomainXMLError, match="NUMA cells"):
            merge_domain(xml, desired, parsed.owner)
        return
    merged = merge_domain(xml, desired, parsed.owner)
    assert parse_domain(merged).spec == desired
    if etree.fromstring(xml.encode()).find("currentMemory") is None:
        # Without <currentMemory> the target follows <memory>; keeping the old target adds the element.
        root = etree.fromstring(merged.encode())
        added = root.find("currentMemory")
        assert int(added.text) * 1024 == parsed.spec.current_memory
        root.remove(added)
        merged = etree.tostring(root, encoding="unicode")
    allowed = {"/domain/memory"} | ({"/domain/cpu/numa/cell"} if cells else set())
    assert "/domain/memory" in _differences(xml, merged) <= allowed


# ------------------------------------------------------------------------------ the parse memo


def test_the_parse_memo_gives_each_caller_its_own_state_and_autostart():
    xml = render_domain("memo", DomainSpec.model_validate({"memory": "1GiB", "vcpus": 2}), OWNER)
    stopped = parse_domain(xml)
    running = parse_domain(xml, state="running", autostart=True)
    assert (stopped.spec.state, stopped.spec.autostart) == ("stopped", False)
    assert (running.spec.state, running.spec.autostart) == ("running", True)
    assert running.spec == DomainSpec.model_validate(
        {**stopped.spec.model_dump(by_alias=True, mode="json"), "state": "running", "autostart": True}
    )
    assert parse_domain(xml) is stopped  # parsed once
    with pytest.raises(ValueError, match="state must be"):
        parse_domain(xml, state="paused")


def test_the_parse_memo_is_bounded(monkeypatch):
    from reconciler.libvirtxml import parse as domxml

    monkeypatch.setattr(domxml, "_PARSED_LIMIT", 4)
    domxml.forget_parsed()
    spec = DomainSpec.model_validate({"memory": "1GiB"})
    xmls = [render_domain(f"d{index}", spec, None) for index in range(10)]
    assert [parse_domain(xml).name for xml in xmls] == [f"d{index}" for index in range(10)]
    assert len(domxml._PARSED) <= 4
    assert xmls[-1] in domxml._PARSED  # the newest are kept
