"""The e2e tier: a real libvirtd with QEMU (qemu:///system) and real TCG guests.

Every test works under a unique name prefix and removes every domain with that prefix when it
ends, whatever happened; it never touches a domain it did not create. Without root and without a
daemon the tier skips with one reason; as root (CI) a missing daemon or guest is a failure, since
``make test-e2e`` (scripts/e2e-setup.sh) provides both.

The guest's kernel and initrd live in :data:`GUEST`, outside the clone: QEMU runs as libvirt-qemu,
which cannot enter a clone under /root or any other mode-700 folder. Every test reaches them
through the ``guest_files`` fixture, which also checks that QEMU may read them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
import yaml

from reconciler.ops.qemu_access import qemu_denied, qemu_identity
from tests.helpers import Run, cli, write

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

URI = "qemu:///system"
#: Where scripts/build-guest.sh builds the guest (the same default, and the same override).
GUEST = Path(os.environ.get("VR_E2E_GUEST", "/var/lib/libvirt/images/virt-reconcile-e2e"))
READY = b"VR-GUEST-READY"


def _unavailable(reason: str) -> None:
    if os.geteuid() == 0:
        pytest.fail(f"{reason}; as root the e2e tier must run (make test-e2e sets it up)")
    pytest.skip(f"{reason}, and not root to set one up (run make test-e2e as root)")


@pytest.fixture(scope="session")
def conn() -> Iterator[libvirt.virConnect]:
    try:
        connection = libvirt.open(URI)
    except libvirt.libvirtError as err:
        _unavailable(f"no libvirtd answers on {URI}: {err.get_error_message()}")
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def guest_files() -> tuple[Path, Path]:
    kernel, initrd = GUEST / "vmlinuz", GUEST / "initrd.img"
    if not (kernel.exists() and initrd.exists()):
        _unavailable(f"no e2e guest in {GUEST} (scripts/build-guest.sh builds it)")
    qemu = qemu_identity()
    denied = qemu_denied(kernel, qemu) if qemu is not None else None
    if denied is not None:
        pytest.fail(
            f"QEMU cannot read the e2e guest in {GUEST}: {denied} (scripts/build-guest.sh repairs it)"
        )
    return kernel, initrd


@dataclass
class E2E:
    """Manifests for qemu:///system under a unique domain-name prefix."""

    root: Path
    prefix: str
    conn: libvirt.virConnect
    kernel: Path
    initrd: Path

    def name(self, short: str) -> str:
        return self.prefix + short

    def guest(self, **spec: object) -> dict:
        """A tiny TCG guest spec: 1 vCPU, 256 MiB, direct kernel boot, serial console."""
        cmdline = "console=ttyS0 quiet" + (" vr.ignore_acpi" if spec.pop("ignore_acpi", False) else "")
        return {
            "vcpus": 1,
            "memory": "256MiB",
            "type": "qemu",
            "boot": {"kernel": str(self.kernel), "initrd": str(self.initrd), "cmdline": cmdline},
            **spec,
        }

    def manifests(self, **domains: dict) -> None:
        """Write the Host and one Domain document per short name."""
        host = {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "local"},
            "spec": {"uri": URI},
        }
        docs = [host] + [
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Domain",
                "metadata": {"name": self.name(short)},
                "spec": spec,
            }
            for short, spec in domains.items()
        ]
        write(self.root, "manifests.yaml", yaml.safe_dump_all(docs, sort_keys=False))

    def cli(self, *args: str) -> Run:
        return cli(args[0], str(self.root), *args[1:])

    def domain(self, short: str) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name(short))

    def exists(self, short: str) -> bool:
        try:
            self.domain(short)
        except libvirt.libvirtError:
            return False
        return True

    def console_shows(self, short: str, marker: bytes = READY, timeout: float = 90) -> bool:
        """Whether the guest prints ``marker`` on its serial console within ``timeout`` seconds."""
        stream = self.conn.newStream(0)
        self.domain(short).openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        seen = bytearray()
        found = threading.Event()

        def read() -> None:
            while not found.is_set():
                try:
                    data = stream.recv(4096)
                except libvirt.libvirtError:
                    return
                if not isinstance(data, bytes) or not data:
                    return
                seen.extend(data)
                if marker in seen:
                    found.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        found.wait(timeout)
        stream.abort()
        return found.is_set()

    def wait_balloon(self, short: str, kib: int, timeout: float = 60) -> int:
        """Wait until the guest's balloon ``actual`` reaches ``kib``; return the last value seen."""
        deadline = time.monotonic() + timeout
        actual = -1
        while time.monotonic() < deadline:
            actual = int(self.domain(short).memoryStats().get("actual", -1))
            if actual == kib:
                break
            time.sleep(0.2)
        return actual

    def cleanup(self) -> None:
        """Destroy and undefine every domain carrying this test's prefix, and nothing else."""
        for dom in self.conn.listAllDomains():
            if not dom.name().startswith(self.prefix):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )


@pytest.fixture
def e2e(tmp_path: Path, conn: libvirt.virConnect, guest_files: tuple[Path, Path]) -> Iterator[E2E]:
    env = E2E(tmp_path, f"vre2e-{uuid.uuid4().hex[:8]}-", conn, *guest_files)
    try:
        yield env
    finally:
        env.cleanup()
