"""``virt-reconcile doctor``: is this machine ready to run KVM guests under libvirt?

Each check prints one line: ok, warn (works, but worth knowing) or problem (with the fix). The
exit code is 1 when any check found a problem. Local facts come from /proc, /sys and qemu.conf;
the daemon's from the libvirt adapter.

doctor takes no manifests: it checks this machine as it is. So the files it checks for QEMU are
those of the domains libvirtd has defined (their kernel, initrd, disks and CD-ROMs); the files of
domains still to be defined are checked by plan's pre-flight (``engine.preflight``), per host, with
the same computation (``ops.qemu_access``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from reconciler.errors import HostError
from reconciler.ops.qemu_access import (
    NOT_CONSIDERED,
    QemuIdentity,
    local_path_fact,
    qemu_conf_user,
    qemu_identity,
    session_identity,
)
from reconciler.spec.hosturi import HostURI
from reconciler.spec.sizes import KIB, human_size

OK, WARN, PROBLEM = "ok", "warn", "problem"
VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    level: str
    name: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DaemonFacts:
    """What libvirtd says about itself and the host."""

    libvirt_version: str
    hypervisor: str
    node_info_memory: int  # bytes, libvirt's node info (the NUMA cell it reports)
    kernel_memory: int | None  # bytes, node memory stats total (the kernel's MemTotal)
    domains: tuple[tuple[str, str], ...] = ()  # every defined domain: name, persistent XML


@dataclass(frozen=True)
class Machine:
    """Where the local checks look; tests point it at a fake tree."""

    sys: Path = Path("/sys")
    proc: Path = Path("/proc")
    dev_kvm: Path = Path("/dev/kvm")
    qemu_conf: Path = Path("/etc/libvirt/qemu.conf")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def check_modules(machine: Machine) -> Check:
    """kvm plus a vendor module (kvm_intel, kvm_amd; kvm_pvm where KVM itself runs in a guest)."""
    loaded = [m for m in ("kvm", *VENDOR_MODULES) if (machine.sys / "module" / m).is_dir()]
    if "kvm" in loaded and len(loaded) > 1:
        return Check(OK, "kvm modules", ", ".join(loaded) + " loaded")
    return Check(
        PROBLEM,
        "kvm modules",
        f"loaded: {', '.join(loaded) or 'none'}",
        "modprobe kvm_intel (Intel) or modprobe kvm_amd (AMD)",
    )


def qemu_user(machine: Machine) -> str:
    """The user QEMU runs as: qemu.conf's ``user``, else Debian's default."""
    return qemu_conf_user(machine.qemu_conf)


def check_dev_kvm(machine: Machine) -> Check:
    """/dev/kvm exists and the QEMU user can read and write it."""
    try:
        info = machine.dev_kvm.stat()
    except OSError:
        return Check(PROBLEM, "/dev/kvm", "missing", "load the kvm modules; check virtualization in the BIOS")
    user = qemu_user(machine)
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return Check(WARN, "/dev/kvm", f"present; QEMU user {user!r} does not exist to check against")
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    mode = info.st_mode
    usable = (
        account.pw_uid == 0
        or (info.st_uid == account.pw_uid and mode & stat.S_IRUSR and mode & stat.S_IWUSR)
        or (info.st_gid in groups and mode & stat.S_IRGRP and mode & stat.S_IWGRP)
        or (mode & stat.S_IROTH and mode & stat.S_IWOTH)
    )
    owner = f"{_group_name(info.st_gid)}, mode {stat.S_IMODE(mode):o}"
    if usable:
        return Check(OK, "/dev/kvm", f"usable by QEMU user {user} (group {owner})")
    return Check(
        PROBLEM,
        "/dev/kvm",
        f"not usable by QEMU user {user} (group {owner})",
        "chgrp kvm /dev/kvm && chmod 660 /dev/kvm",
    )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_cpu_flags(machine: Machine, kvm_usable: bool) -> Check:
    """vmx (Intel VT-x) or svm (AMD-V) in the CPU flags."""
    flags = set()
    for line in (_read(machine.proc / "cpuinfo") or "").splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    found = sorted(flags & {"vmx", "svm"})
    if found:
        return Check(OK, "CPU virtualization", f"{'/'.join(found)} present")
    if kvm_usable:
        return Check(
            WARN,
            "CPU virtualization",
            "no vmx/svm flags: this machine is itself a guest and its KVM is nested or "
            "emulated; Linux guests may hang early under type kvm, boot them as type qemu",
        )
    return Check(PROBLEM, "CPU virtualization", "no vmx/svm flags", "enable VT-x/AMD-V in the firmware")


def check_nested(machine: Machine) -> Check:
    """Whether guests here could run KVM themselves (the vendor module's ``nested`` parameter)."""
    for module in ("kvm_intel", "kvm_amd"):
        value = _read(machine.sys / "module" / module / "parameters" / "nested")
        if value is not None:
            if value in ("Y", "1"):
                return Check(OK, "nested virtualization", f"on ({module})")
            return Check(
                WARN,
                "nested virtualization",
                f"off ({module}): guests cannot use KVM themselves",
                f"modprobe -r {module} && modprobe {module} nested=1",
            )
    return Check(WARN, "nested virtualization", "unknown: no kvm_intel/kvm_amd nested parameter")


def check_ksm(machine: Machine) -> Check:
    """KSM running, and how much it saves (what memory.countKsm credits)."""
    ksm = machine.sys / "kernel" / "mm" / "ksm"
    run, sharing = _read(ksm / "run"), _read(ksm / "pages_sharing")
    if run is None:
        return Check(WARN, "KSM", "not available in this kernel")
    saved = int(sharing or 0) * os.sysconf("SC_PAGE_SIZE")
    if run == "1":
        return Check(OK, "KSM", f"running, {sharing or 0} pages shared ({human_size(saved)} saved)")
    return Check(
        WARN, "KSM", "not running (memory.countKsm credits nothing)", "echo 1 > /sys/kernel/mm/ksm/run"
    )


def check_swap(machine: Machine) -> Check:
    """Swap size (what memory.countSwap credits)."""
    for line in (_read(machine.proc / "meminfo") or "").splitlines():
        if line.startswith("SwapTotal:"):
            swap = int(line.split()[1]) * KIB
            if swap:
                return Check(OK, "swap", human_size(swap))
            return Check(WARN, "swap", "none (memory.countSwap credits nothing)")
    return Check(WARN, "swap", "unknown (no SwapTotal in /proc/meminfo)")


def check_daemon(uri: str, facts: Callable[[str], DaemonFacts]) -> list[Check]:
    """libvirtd reachable with its version, and node info memory against the kernel's total."""
    try:
        daemon = facts(uri)
    except HostError as err:
        return [
            Check(
                PROBLEM,
                "libvirtd",
                f"{uri} unreachable: {err}",
                "start it: virtlogd -d && libvirtd -d (or systemctl start libvirtd)",
            )
        ]
    checks = [Check(OK, "libvirtd", f"{uri}: libvirt {daemon.libvirt_version}, {daemon.hypervisor}")]
    kernel, node = daemon.kernel_memory, daemon.node_info_memory
    if kernel is None:
        checks.append(
            Check(WARN, "host memory", f"node info {human_size(node)}; the driver has no memory stats")
        )
    elif abs(kernel - node) > kernel // 100:
        checks.append(
            Check(
                WARN,
                "host memory",
                f"libvirt's node info says {human_size(node)} (one NUMA cell) but the kernel has "
                f"{human_size(kernel)}; virt-reconcile uses the kernel's total",
            )
        )
    else:
        checks.append(Check(OK, "host memory", f"{human_size(kernel)} (node info agrees)"))
    return checks


def domain_files(xml: str) -> list[tuple[str, bool]]:
    """The files QEMU opens for a domain: kernel, initrd, file and block disks and CD-ROMs, each with
    whether QEMU writes it (a disk that is not read-only)."""
    root = etree.fromstring(xml.encode())
    found = [(path, False) for path in (root.findtext("os/kernel"), root.findtext("os/initrd")) if path]
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        path = None if source is None else source.get("file") or source.get("dev")
        if path and disk.get("device", "disk") in ("disk", "cdrom", "lun"):
            written = disk.get("device", "disk") != "cdrom" and disk.find("readonly") is None
            found.append((path, written))
    return found


def _identity(uri: HostURI, machine: Machine) -> QemuIdentity | None:
    if uri.text.rstrip("/").endswith("/session"):
        return session_identity()
    return qemu_identity(machine.qemu_conf)


def check_domain_files(uri: str, daemon: DaemonFacts, machine: Machine) -> Check | None:
    """Whether QEMU may open the files of every defined domain: each folder on the way searchable by
    the QEMU user, and the file itself readable (writable for a disk) unless libvirt hands it over at
    start (dynamic_ownership). Only for a hypervisor on this machine; None for any other."""
    address = HostURI(uri)
    if not address.is_local:
        return None
    who = _identity(address, machine)
    if who is None:
        user = qemu_user(machine)
        return Check(WARN, "domain files", f"not checked: QEMU user {user!r} does not exist on this machine")
    issues, count = [], 0
    for name, xml in daemon.domains:
        for path, written in domain_files(xml):
            count += 1
            fact = local_path_fact(path, who)
            denied = fact.qemu_denied or (fact.qemu_cannot_write if written else None)
            if fact.exists is False:
                issues.append(f"{name}: {path} does not exist")
            elif denied is not None:
                issues.append(f"{name}: QEMU cannot open {path}: {denied}")
    domains = len(daemon.domains)
    if issues:
        shown = "; ".join(issues[:5]) + (f"; and {len(issues) - 5} more" if len(issues) > 5 else "")
        return Check(
            WARN,
            "domain files",
            f"{shown} ({NOT_CONSIDERED})",
            "make every folder on the way searchable by the QEMU user (chmod o+x), or move the files "
            "to /var/lib/libvirt/images",
        )
    return Check(
        OK,
        "domain files",
        f"{count} file(s) of {domains} domain(s) can be opened by QEMU user {who.user} ({NOT_CONSIDERED})",
    )


def run_checks(uri: str, facts: Callable[[str], DaemonFacts], machine: Machine | None = None) -> list[Check]:
    """Every check, in the order an operator fixes them."""
    machine = machine or Machine()
    modules, dev_kvm = check_modules(machine), check_dev_kvm(machine)
    answered: list[DaemonFacts] = []

    def remembered(address: str) -> DaemonFacts:
        answered.append(facts(address))
        return answered[-1]

    daemon = check_daemon(uri, remembered)
    files = check_domain_files(uri, answered[0], machine) if answered else None
    return [
        modules,
        dev_kvm,
        check_cpu_flags(machine, kvm_usable=dev_kvm.level == OK),
        *daemon,
        *([files] if files is not None else []),
        check_nested(machine),
        check_ksm(machine),
        check_swap(machine),
    ]
