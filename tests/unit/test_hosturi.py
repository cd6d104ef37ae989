"""The host URI value object: the only code that knows what sandbox: means."""

from pathlib import Path

import pytest

from reconciler.spec.hosturi import HostURI


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("qemu+unix:///system", True),
        ("qemu+ssh://localhost/system", True),
        ("qemu+ssh://root@hv1.example.com/system", False),
        ("qemu+tcp://10.0.0.5/system", False),
        ("test:///default", False),
        ("test+unix:///default?socket=/run/x.sock", False),
        ("sandbox:/tmp/hv1.xml", False),
    ],
)
def test_local_means_a_real_hypervisor_on_this_machine(uri, local):
    assert HostURI.parse(uri).is_local is local


@pytest.mark.parametrize(
    ("uri", "in_process"),
    [
        ("sandbox:state/hv1.xml", True),
        ("test:///default", True),
        ("test:///tmp/node.xml", True),
        ("test+unix:///default?socket=/run/hv1.sock", False),  # the test driver behind libvirtd
        ("test://hv1/default", False),  # a host part: libvirtd on hv1, over the default transport (TLS)
        ("test://localhost/default", False),  # the same through this machine's libvirtd
        ("qemu:///system", False),
        ("qemu+ssh://hv1/system", False),
    ],
)
def test_only_an_in_process_driver_is_read_one_by_one(uri, in_process):
    assert HostURI.parse(uri).in_process is in_process


def test_parts():
    uri = HostURI.parse("qemu+ssh://root@hv1.example.com/system")
    assert (uri.scheme, uri.driver, uri.transport, uri.hostname) == (
        "qemu+ssh",
        "qemu",
        "ssh",
        "hv1.example.com",
    )
    assert not uri.is_sandbox
    with pytest.raises(ValueError, match="not a sandbox"):
        _ = uri.sandbox_path


def test_sandbox_paths_resolve_against_the_manifest_folder(tmp_path: Path):
    uri = HostURI.parse("sandbox:state/hv1.xml")
    assert uri.is_sandbox and uri.sandbox_path == Path("state/hv1.xml")
    resolved = uri.resolved(tmp_path)
    assert resolved.text == f"sandbox:{(tmp_path / 'state/hv1.xml').resolve()}"
    assert resolved.resolved(Path("/elsewhere")) == resolved  # absolute paths stay
    assert HostURI.parse("qemu:///system").resolved(tmp_path).text == "qemu:///system"


@pytest.mark.parametrize(
    ("text", "message"),
    [("hv1", "not a libvirt URI"), ("sandbox:", "needs a state file"), ("sandbox:  ", "needs a state file")],
)
def test_bad_uris_say_why(text, message):
    with pytest.raises(ValueError, match=message):
        HostURI.parse(text)
