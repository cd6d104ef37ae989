"""Sandbox-tier fixtures: a manifest folder with one sandbox host, and a look at its state file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.sandbox import autostart_names
from tests.daemon_helpers import DaemonProcess, Repo
from tests.helpers import domain_yaml, host_yaml, write

#: The webhook secret the daemon tests' daemons are started with.
SECRET = b"s3cret"

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@dataclass
class DomainView:
    """What the sandbox holds for one domain, read through libvirt's test driver."""

    active: bool
    autostart: bool
    vcpus: int
    memory_kib: int
    current_kib: int
    xml: str


@dataclass
class Sandbox:
    """A manifest folder and the sandbox host state it drives."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state" / "hv1.xml"

    def domains(self, **specs: dict) -> None:
        """Replace the Domain manifests with one document per name."""
        text = "---\n".join(domain_yaml(name, **spec) for name, spec in specs.items())
        write(self.root, "domains.yaml", text or "# no domains\n")

    def view(self) -> dict[str, DomainView]:
        """Every domain in the sandbox state file."""
        conn = libvirt.open(f"test://{self.state}")
        try:
            # The test driver's node format has no autostart: the sandbox keeps it beside the domains.
            autostart = autostart_names(self.state.read_text())
            found = {}
            for dom in conn.listAllDomains():
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                from lxml import etree

                root = etree.fromstring(xml.encode())
                found[dom.name()] = DomainView(
                    active=bool(dom.isActive()),
                    autostart=dom.name() in autostart,
                    vcpus=int(root.findtext("vcpu")),
                    memory_kib=int(root.findtext("memory")),
                    current_kib=int(root.findtext("currentMemory")),
                    xml=xml,
                )
            return found
        finally:
            conn.close()

    def seed(self, xml: str, running: bool = True) -> None:
        """Add a domain to the state file by hand, as an operator seeding the sandbox would."""
        from reconciler.adapters.sandbox import SandboxDomain, compose_node_xml, new_node_xml

        previous = self.state.read_text() if self.state.exists() else new_node_xml(16, 64 * 1024**3)
        conn = libvirt.open(f"test://{self.state}") if self.state.exists() else None
        existing = []
        if conn is not None:
            existing = [
                SandboxDomain(
                    d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), bool(d.isActive()), bool(d.autostart())
                )
                for d in conn.listAllDomains()
            ]
            conn.close()
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(compose_node_xml(previous, [*existing, SandboxDomain(xml, running, False)]))


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    write(tmp_path, "hosts.yaml", host_yaml())
    return Sandbox(tmp_path)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """A local bare git repository to push manifests to."""
    return Repo(tmp_path)


@pytest.fixture
def daemons(tmp_path: Path):
    """Start daemon processes on a repository (``daemons(repo, *args)``); all stopped after the test."""
    started: list[DaemonProcess] = []

    def start(repo: Repo, *args: str, secret: bytes | None = SECRET) -> DaemonProcess:
        process = DaemonProcess(
            "--source", repo.url, "--interval", "1h", *args, secret=secret, state_dir=tmp_path / "state"
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
