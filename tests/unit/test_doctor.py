"""doctor's local checks on a fake /sys, /proc and /dev tree."""

import os
from pathlib import Path

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
    check_ksm,
    check_modules,
    check_nested,
    check_swap,
    qemu_user,
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
