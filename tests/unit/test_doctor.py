"""doctor's local checks on a fake /sys, /proc and /dev tree, and QEMU's access to domain files."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.engine.hypervisor import PathFact
from reconciler.errors import TemporaryHostError
from reconciler.ops.doctor import (
    OK,
    PROBLEM,
    WARN,
    DaemonFacts,
    Machine,
    check_cpu_flags,
    check_daemon,
    check_dev_kvm,
    check_domain_files,
    check_ksm,
    check_modules,
    check_nested,
    check_swap,
    domain_files,
    qemu_user,
    run_checks,
)
from reconciler.ops.qemu_access import (
    READ,
    SEARCH,
    WRITE,
    QemuIdentity,
    allows,
    local_path_fact,
    qemu_conf_user,
    qemu_denied,
    qemu_identity,
)

GiB = 1024**3


def machine(
    tmp_path: Path,
    *,
    modules=("kvm", "kvm_intel"),
    cpu_flags="fpu vmx sse",
    nested="Y",
    ksm_run="1",
    swap_kb=2097148,
) -> Machine:
    for module in modules:
        (tmp_path / "sys/module" / module / "parameters").mkdir(parents=True, exist_ok=True)
    if nested is not None and "kvm_intel" in modules:
        (tmp_path / "sys/module/kvm_intel/parameters/nested").write_text(nested + "\n")
    ksm = tmp_path / "sys/kernel/mm/ksm"
    ksm.mkdir(parents=True)
    (ksm / "run").write_text(ksm_run + "\n")
    (ksm / "pages_sharing").write_text("2560\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {cpu_flags}\n")
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: 1000 kB\nSwapTotal: {swap_kb} kB\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/qemu.conf").write_text('#user = "nobody"\nuser = "root"\n')
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    return Machine(
        sys=tmp_path / "sys", proc=tmp_path / "proc", dev_kvm=kvm, qemu_conf=tmp_path / "etc/qemu.conf"
    )


def test_a_healthy_machine(tmp_path):
    m = machine(tmp_path)
    assert check_modules(m).level == OK
    assert qemu_user(m) == "root"
    assert check_dev_kvm(m).level == OK  # root can use anything
    assert check_cpu_flags(m, kvm_usable=True).level == OK
    assert check_nested(m).level == OK
    ksm = check_ksm(m)
    assert ksm.level == OK and "2560 pages shared" in ksm.detail
    assert check_swap(m).level == OK


def test_problems_and_their_fixes(tmp_path):
    m = machine(tmp_path, modules=("kvm",), cpu_flags="fpu sse", nested="N", ksm_run="0", swap_kb=0)
    modules = check_modules(m)
    assert modules.level == PROBLEM and "modprobe kvm_intel" in modules.fix
    assert check_cpu_flags(m, kvm_usable=False).level == PROBLEM
    assert check_cpu_flags(m, kvm_usable=True).level == WARN  # KVM works, so this is a nested guest
    assert check_ksm(m).fix == "echo 1 > /sys/kernel/mm/ksm/run"
    assert check_swap(m).level == WARN
    missing = Machine(dev_kvm=tmp_path / "no-kvm", sys=m.sys, proc=m.proc, qemu_conf=m.qemu_conf)
    assert check_dev_kvm(missing).level == PROBLEM


def test_dev_kvm_permissions_for_an_unprivileged_qemu_user(tmp_path):
    m = machine(tmp_path)
    (tmp_path / "etc/qemu.conf").write_text('user = "nobody"\n')
    os.chmod(m.dev_kvm, 0o600)
    check = check_dev_kvm(m)
    assert check.level == PROBLEM and check.fix == "chgrp kvm /dev/kvm && chmod 660 /dev/kvm"
    os.chmod(m.dev_kvm, 0o666)
    assert check_dev_kvm(m).level == OK


def test_daemon_memory_mismatch_is_explained():
    def facts(_uri):
        return DaemonFacts("9.0.0", "QEMU 7.2.0", node_info_memory=4 * GiB, kernel_memory=24 * GiB)

    daemon, memory = check_daemon("qemu:///system", facts)
    assert daemon.level == OK and "libvirt 9.0.0, QEMU 7.2.0" in daemon.detail
    assert memory.level == WARN and "4GiB (one NUMA cell) but the kernel has 24GiB" in memory.detail


def test_daemon_unreachable():
    def facts(uri):
        raise TemporaryHostError(uri, "no socket")

    [check] = check_daemon("qemu:///system", facts)
    assert check.level == PROBLEM and "libvirtd -d" in check.fix


# --- QEMU's access to domain files (reconciler.ops.qemu_access), and doctor's check of them ---

QEMU = QemuIdentity("qemu", uid=4242, gids=frozenset({4242}))  # owns nothing, in no group of the files


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may enter (tmp_path lies under a mode-700 folder of pytest's)."""
    path = Path(tempfile.mkdtemp(prefix="vr-doctor-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _file(folder: Path, mode: int = 0o644, folder_mode: int = 0o755) -> Path:
    folder.mkdir(exist_ok=True)
    folder.chmod(folder_mode)
    file = folder / "vmlinuz"
    file.write_text("kernel")
    file.chmod(mode)
    return file


def test_a_private_folder_on_the_way_closes_a_file_to_qemu(open_dir):
    private = _file(open_dir / "private", folder_mode=0o700)
    assert qemu_denied(private, QEMU) == (
        f"folder {open_dir / 'private'} (mode 700, owner {private.owner()}:{private.group()}) "
        "is not searchable by qemu"
    )
    assert qemu_denied(_file(open_dir / "public"), QEMU) is None
    # the file's own mode does not matter: libvirt hands the file to QEMU's user when it starts the domain
    assert qemu_denied(_file(open_dir / "closed", mode=0o600), QEMU) is None


def test_a_symlink_is_followed_into_the_folders_it_leads_through(open_dir):
    target = _file(open_dir / "private", folder_mode=0o700)
    link = open_dir / "vmlinuz"
    link.symlink_to(target)
    assert "private" in (qemu_denied(link, QEMU) or "")


def test_without_dynamic_ownership_the_file_itself_must_be_readable_or_writable(open_dir):
    fixed = replace(QEMU, dynamic_ownership=False)
    closed = _file(open_dir / "closed", mode=0o600)
    assert (qemu_denied(closed, fixed, READ) or "").endswith(
        "is not readable by qemu (qemu.conf: dynamic_ownership = 0)"
    )
    shared = _file(open_dir / "shared", mode=0o644)
    assert qemu_denied(shared, fixed, READ) is None
    assert "is not writable by qemu" in (qemu_denied(shared, fixed, WRITE) or "")
    assert local_path_fact(str(shared), fixed) == PathFact(
        exists=True, qemu_cannot_write=qemu_denied(shared, fixed, WRITE)
    )
    assert local_path_fact(str(open_dir / "nothing"), fixed) == PathFact(exists=False)


def _stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_the_owner_group_or_other_bits_apply_as_the_kernel_picks_them():
    assert not allows(_stat(0o070, uid=4242, gid=4242), QEMU, SEARCH)  # the owner's bits alone
    assert allows(_stat(0o100, uid=4242, gid=0), QEMU, SEARCH)
    assert allows(_stat(0o010, uid=0, gid=4242), QEMU, SEARCH)  # a group of QEMU's process
    assert not allows(_stat(0o701, uid=0, gid=4242), QEMU, SEARCH)  # in the group: other bits do not count
    assert allows(_stat(0o001, uid=0, gid=0), QEMU, SEARCH)
    assert allows(_stat(0o000, uid=1, gid=1), replace(QEMU, uid=0), SEARCH)  # root opens anything


def test_qemu_identity_from_qemu_conf(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('# user = "nobody"\nuser = "+0"\ngroup = "root"\ndynamic_ownership = 0\n')
    who = qemu_identity(conf)
    assert who is not None
    assert (who.user, who.uid, who.dynamic_ownership) == ("root", 0, False)
    assert 0 in who.gids
    conf.write_text('user = "no-such-user-here"\n')
    assert qemu_identity(conf) is None
    assert qemu_conf_user(tmp_path / "missing.conf") == "libvirt-qemu"


DOMAIN_XML = """<domain type='qemu'><name>{name}</name>
  <os><type>hvm</type><kernel>{kernel}</kernel></os>
  <devices>
    <disk type='file' device='disk'><source file='{disk}'/><target dev='vda'/></disk>
    <disk type='file' device='cdrom'><source file='{iso}'/><target dev='sda'/><readonly/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdb'/></disk>
  </devices>
</domain>"""


def test_domain_files_are_kernel_initrd_disks_and_cdroms():
    xml = DOMAIN_XML.format(name="web", kernel="/k", disk="/d.qcow2", iso="/install.iso")
    assert domain_files(xml) == [("/k", False), ("/d.qcow2", True), ("/install.iso", False)]


def test_doctor_warns_about_a_defined_domain_whose_kernel_qemu_cannot_reach(tmp_path, open_dir):
    m = machine(tmp_path)
    (tmp_path / "etc/qemu.conf").write_text('user = "nobody"\n')
    hidden = _file(open_dir / "private", folder_mode=0o700)
    disk = _file(open_dir / "public")

    def facts(_uri):
        xml = DOMAIN_XML.format(name="web", kernel=hidden, disk=disk, iso=disk)
        return DaemonFacts("9.0.0", "QEMU 7.2.0", GiB, GiB, domains=(("web", xml),))

    checks = {check.name: check for check in run_checks("qemu:///system", facts, m)}
    files = checks["domain files"]
    assert files.level == WARN
    assert files.detail.startswith(f"web: QEMU cannot open {hidden}: folder {open_dir / 'private'} (mode 700")
    assert "ACLs" in files.detail and "chmod o+x" in files.fix
    hidden.parent.chmod(0o755)
    ok = check_domain_files("qemu:///system", facts("qemu:///system"), m)
    assert ok is not None and ok.level == OK and "3 file(s) of 1 domain(s)" in ok.detail
    assert check_domain_files("qemu+ssh://hv1/system", facts(""), m) is None  # not this machine's files
