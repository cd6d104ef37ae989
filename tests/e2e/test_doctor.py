"""``doctor`` on this machine, against its real libvirtd."""

from tests.helpers import cli


def test_doctor_on_this_machine(conn):
    result = cli("doctor", "--uri", "qemu:///system")
    lines = result.out.splitlines()
    assert result.code == 0, result.out
    by_name = {line[8:].split(":", 1)[0]: line[:8].strip() for line in lines}
    assert by_name["kvm modules"] == "ok"
    assert by_name["/dev/kvm"] == "ok"
    assert by_name["libvirtd"] == "ok"
    version = conn.getLibVersion()
    assert f"libvirt {version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}" in result.out
    assert {"CPU virtualization", "host memory", "nested virtualization", "KSM", "swap"} <= set(by_name)


def test_doctor_reports_an_unreachable_daemon():
    result = cli("doctor", "--uri", "test:///nonexistent/node.xml")
    assert result.code == 1
    assert "problem libvirtd: test:///nonexistent/node.xml unreachable" in result.out
    assert "fix: start it" in result.out
