"""Shared test helpers: manifests on disk, the CLI in-process, the shared libvirt XML corpus."""

from __future__ import annotations

import io
import queue
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt import leases
from reconciler.adapters.libvirt.lockholders import LockLimits
from reconciler.cli.main import main
from reconciler.engine.hypervisor import DomainObservation
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.hosturi import HostURI
from reconciler.spec.models import Domain, DomainSpec, Owner

REPO = Path(__file__).resolve().parent.parent
SHARED_DOMAINS = REPO.parent / "shared" / "testdata" / "libvirt-domains"

HOST_YAML = """\
apiVersion: virt-reconcile/v1
kind: Host
metadata: {{name: {name}}}
spec:
  uri: sandbox:{state}
  capacity: {{cpus: {cpus}, memory: {memory}}}
  prune: {prune}
"""


def shared_domain_files() -> list[Path]:
    """Every XML file of the shared corpus; the calling test is skipped when ../shared is absent."""
    if not SHARED_DOMAINS.is_dir():
        pytest.skip(f"shared libvirt XML corpus not found at {SHARED_DOMAINS} (../shared is absent)")
    return sorted(SHARED_DOMAINS.glob("*.xml"))


def host_yaml(
    name: str = "hv1",
    state: str = "state/hv1.xml",
    prune: bool = False,
    cpus: int = 16,
    memory: str = "64GiB",
) -> str:
    """A sandbox Host document (default policy: 4 vCPUs per CPU, memory 1:1 with 1 GiB reserved)."""
    return HOST_YAML.format(name=name, state=state, prune=str(prune).lower(), cpus=cpus, memory=memory)


def domain_yaml(name: str, host: str | None = None, **spec: object) -> str:
    """A Domain document; ``spec`` values are written as YAML flow values."""
    import yaml

    meta = {"name": name, **({"host": host} if host else {})}
    body = {"memory": "1GiB", **spec}
    return yaml.safe_dump(
        {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": meta, "spec": body},
        sort_keys=False,
    )


def domain_model(name: str, **spec: object) -> Domain:
    """A validated Domain document (2 GiB unless ``spec`` says otherwise), for pure-code tests."""
    return Domain.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": name},
            "spec": {"memory": "2GiB", **spec},
        }
    )


def observed_domain(
    name: str,
    owner: Owner | None,
    *,
    active: bool = True,
    autostart: bool = False,
    xml: str | None = None,
    **spec: object,
) -> DomainObservation:
    """A domain as the adapter would observe it: our rendered XML, managed when ``owner`` is given."""
    desired = DomainSpec.model_validate({"memory": "2GiB", **spec})
    xml = xml or render_domain(name, desired, owner)
    return DomainObservation(name=name, xml=xml, active=active, autostart=autostart)


def write(directory: Path, name: str, text: str) -> Path:
    """Write a manifest file (dedented) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@dataclass
class Run:
    """The result of one CLI run."""

    code: int
    out: str
    err: str


def cli(*args: str) -> Run:
    """Run the CLI in-process and capture its output."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return Run(code, out.getvalue(), err.getvalue())


def serve(path: Path, answer: Callable[[socket.socket], None]) -> socket.socket:
    """A unix socket at ``path`` that hands each client to ``answer`` (a daemon gone wrong)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)

    def run() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # the server was closed
            answer(client)

    threading.Thread(target=run, daemon=True).start()
    return server


@contextmanager
def lease_held_by_another_run(
    conn: libvirt.virConnect, uri: HostURI, limits: LockLimits, host: str = "hv"
) -> Iterator[str]:
    """A host's lease taken on ``conn`` and held by another thread, as another run of this process
    (a daemon's other host lane) holds it; yields what is held. (One that this very thread holds is
    its own run's: refused at once, never waited for.)"""
    taken: queue.Queue[str] = queue.Queue()
    release = threading.Event()

    def hold() -> None:
        with leases.hypervisor_lease(conn, uri, host, limits) as what:
            taken.put(what)
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        yield taken.get(timeout=60)
    finally:
        release.set()
        thread.join()
