"""``doctor`` on this machine, against its real libvirtd."""

import shutil

from reconciler.libvirtxml.render import render_domain
from tests.helpers import cli, domain_model


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
    assert {
        "CPU virtualization",
        "host memory",
        "domain files",
        "nested virtualization",
        "KSM",
        "swap",
    } <= set(by_name)


def test_doctor_warns_about_a_defined_domain_whose_kernel_qemu_cannot_reach(e2e, tmp_path):
    """tmp_path lies under pytest's mode-700 folder, like a clone under /root: QEMU cannot enter it."""
    kernel = tmp_path / "vmlinuz"
    shutil.copy(e2e.kernel, kernel)
    spec = e2e.guest(state="stopped")
    spec["boot"]["kernel"] = str(kernel)
    name = e2e.name("hidden")
    e2e.conn.defineXML(render_domain(name, domain_model(name, **spec).spec, None))
    result = cli("doctor", "--uri", "qemu:///system")
    assert result.code == 0, result.out  # a warning, not a problem: the machine itself is fine
    [line] = [line for line in result.out.splitlines() if "domain files:" in line]
    assert line.startswith("warn") and f"{name}: QEMU cannot open {kernel}: folder " in line


def test_doctor_reports_an_unreachable_daemon():
    result = cli("doctor", "--uri", "test:///nonexistent/node.xml")
    assert result.code == 1
    assert "problem libvirtd: test:///nonexistent/node.xml unreachable" in result.out
    assert "fix: start it" in result.out
