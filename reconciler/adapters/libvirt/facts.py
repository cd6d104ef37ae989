"""What ``doctor`` asks a libvirt daemon, and this machine's swap: facts about a hypervisor that
are not the Hypervisor protocol's."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from reconciler.adapters.libvirt.connections import open_connection
from reconciler.adapters.libvirt.environment import domain_xmls
from reconciler.adapters.libvirt.errors import wrap
from reconciler.spec.sizes import KIB

if TYPE_CHECKING:
    from reconciler.ops.doctor import DaemonFacts


def local_swap(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """This machine's total swap in bytes, from the kernel; None when it cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) * KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def daemon_facts(uri: str) -> DaemonFacts:
    """What ``doctor`` asks libvirtd: versions, and node info memory against the kernel's total."""
    from reconciler.ops.doctor import DaemonFacts  # doctor's own module: plan and apply never need it

    conn = open_connection(uri, uri)
    try:
        info = conn.getInfo()
        kernel = None
        with contextlib.suppress(libvirt.libvirtError, KeyError):
            kernel = int(conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)["total"]) * KIB
        return DaemonFacts(
            libvirt_version=_version(conn.getLibVersion()),
            hypervisor=f"{conn.getType()} {_version(conn.getVersion())}",
            node_info_memory=int(info[1]) * 1024 * KIB,
            kernel_memory=kernel,
            domains=domain_xmls(conn),
        )
    except libvirt.libvirtError as err:
        raise wrap(uri, "daemon facts", err) from err
    finally:
        conn.close()


def _version(number: int) -> str:
    """libvirt's packed version number (major * 1,000,000 + minor * 1,000 + micro) as text."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
