"""The host URI value object: the only code that knows what sandbox: means."""

from pathlib import Path

import pytest

from reconciler.spec.hosturi import DEFAULT_URI_RULES, HostURI, UriRules


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


def refusal(text: str, root: Path, rules: UriRules = DEFAULT_URI_RULES) -> str | None:
    return HostURI.parse(text).checked(root, root, rules)[1]


@pytest.mark.parametrize(
    "text",
    [
        "qemu:///system",
        "qemu+unix:///session",
        "qemu+ssh://root@hv1.example.com/system",
        "qemu+tls://hv1.example.com:16514/system",
        "qemu+libssh2://admin@[fd00::1]/system",
        "qemu+tcp://10.0.0.5/system",
        "test:///default",
        "test+unix:///default",
    ],
)
def test_transports_that_only_connect_are_allowed_by_default(tmp_path: Path, text: str):
    assert refusal(text, tmp_path) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("qemu+ext:///system?command=./payload.sh", "transport 'ext' runs a command the URI names"),
        ("qemu+ext:///system", "transport 'ext' runs a command"),
        ("qemu+EXT:///system", "transport 'ext' runs a command"),
        ("qemu+bogus:///system", "transport 'bogus' is not a transport allowed by default"),
        ("qemu:///system?socket=/tmp/evil.sock", "query parameter 'socket' is refused"),
        ("qemu+ssh://hv1/system?netcat=/tmp/nc", "query parameter 'netcat' is refused"),
        ("qemu+ssh://hv1/system?KeyFile=/root/.ssh/id", "query parameter 'keyfile' is refused"),
        ("qemu+tls://hv1/system?pkipath=/tmp", "query parameter 'pkipath' is refused"),
        ("qemu+ssh://hv1/system?known_hosts=/dev/null", "query parameter 'known_hosts' is refused"),
        ("qemu+libssh://hv1/system?sshauth=agent", "query parameter 'sshauth' is refused"),
        ("qemu+tls://hv1/system?no_verify=1", "query parameter 'no_verify' is refused"),
        ("qemu:///embed?root=/tmp/x", "query parameter 'root' is refused"),
        ("qemu+ssh://hv1/system?x=1;command=y", "query parameter 'x' is refused"),
        ("qemu+ssh://hv1/system?%63ommand=y", "query parameter 'command' is refused"),
        ("qemu+ssh://-oProxyCommand=x/system", "machine name '-oproxycommand=x' is not a host name"),
        ("qemu+ssh://-oProxyCommand=x@hv1/system", "user name '-oProxyCommand=x' is not a plain name"),
        ("qemu+ssh://root:secret@hv1/system", "a password in the URI"),
        ("qemu+ssh://hv1/system#x", "a libvirt URI has no #fragment"),
        ("qemu+ssh://hv1:99999/system", "not a valid URI"),
        ("test:///etc/shadow", "the test driver's node file /etc/shadow is outside the manifest root"),
        ("test+unix:///etc/node.xml", "the test driver behind a libvirtd opens only /default"),
        ("test://hv1/tmp/node.xml", "the test driver behind a libvirtd opens only /default"),
    ],
)
def test_uris_that_run_commands_or_pick_files_are_refused_by_default(tmp_path: Path, text: str, why: str):
    """``qemu+ext:///system?command=./payload.sh`` ran the script during plan."""
    found = refusal(text, tmp_path)
    assert found is not None and found.startswith(why), found


def test_the_operator_allows_more_by_name(tmp_path: Path):
    socket = "test+unix:///default?socket=/run/hv1.sock"
    assert refusal(socket, tmp_path, UriRules.of(params=["Socket"])) is None
    assert refusal(socket, tmp_path, UriRules.of(params=["keyfile"])) is not None
    ext = "qemu+ext:///system?command=/usr/local/bin/tunnel"
    assert refusal(ext, tmp_path, UriRules.of(params=["command"], transports=["ext"])) is None
    assert refusal(ext, tmp_path, UriRules.of(transports=["ext"])) is not None


def test_files_a_uri_names_stay_inside_the_manifest_root(tmp_path: Path):
    """``sandbox:/etc/shadow`` was read (its first line reached the plan) and would have been written."""
    root = tmp_path / "root"
    (root / "state").mkdir(parents=True)
    (root / "state" / "out.xml").symlink_to(tmp_path / "elsewhere.xml")
    (root / "state" / "in.xml").symlink_to(root / "state" / "real.xml")
    assert refusal("sandbox:state/hv1.xml", root) is None
    assert refusal("sandbox:state/in.xml", root) is None
    assert refusal(f"test://{root}/state/node.xml", root) is None
    for text in (
        "sandbox:/etc/shadow",
        "sandbox:../../../tmp/x.xml",
        "sandbox:state/out.xml",
        "sandbox:/dev/zero",
    ):
        found = refusal(text, root)
        assert found is not None and "is outside the manifest root" in found, (text, found)
