"""Pre-flight: what a host must offer before its domains are defined and started.

A domain can be defined with a network that does not exist, a bridge that is not there or a disk
image that was never created: libvirt accepts the definition and only the start fails, half-way
through an apply. So, per host and before anything is applied, the desired domains are held
against the host's environment (the adapter's facts: networks, bridges, files; see
``Hypervisor.environment``):

- a NIC's ``network`` must exist; it must be active when the domain is to run (an autostart flag
  alone is not accepted: it starts the network at the host's next boot, not now), else a warning;
  a domain that autostarts on a network that does not is warned about (it would fail after a reboot);
- a NIC's ``bridge`` must exist; one libvirt reports as another type is a warning (an Open vSwitch
  bridge is fine, a plain NIC is not);
- a disk, kernel or initrd path must exist; when the QEMU user could not open it (local hosts
  only), that is an error for a domain that is to run and a warning for one that stays stopped;
- a graphics ``passwordFile`` must be a regular, readable file on the machine virt-reconcile runs on,
  holding one line no longer than the graphics type allows (VNC: 8 characters): the definition is
  sent with it, so a file that cannot be used would stop an apply half-way, after its volumes.

What the environment could not check (a remote file in no storage pool, a simulated host's
networks) is listed in ``unchecked``, never guessed. Pure: data in, data out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.engine.hypervisor import HostEnvironment, PathFact
from reconciler.spec.consoles import Graphics
from reconciler.spec.models import Domain, DomainSpec, Interface

#: The longest password each graphics type takes (VNC's challenge holds 8 characters).
PASSWORD_LIMITS = {"vnc": 8, "spice": 256}


@dataclass(frozen=True)
class Preflight:
    """The verdict for one host: errors block it, warnings are shown, unchecked says what was not seen."""

    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether nothing blocks the host."""
        return not self.errors


@dataclass
class _Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchecked: dict[str, None] = field(default_factory=dict)  # ordered, without repeats

    def problem(self, fatal: bool, message: str) -> None:
        (self.errors if fatal else self.warnings).append(message)


def domain_paths(spec: DomainSpec) -> list[tuple[str, str, bool]]:
    """Each file a domain uses on its host: (field, path, whether QEMU writes it). A volume is made
    by the plan, in its pool (``engine.volumes`` checks the pool and the base image are there); the
    base image of an overlay is a file QEMU reads for as long as the overlay lives."""
    found = []
    for i, disk in enumerate(spec.disks):
        source = disk.volume.from_ if disk.volume is not None else None
        if disk.path is not None:
            found.append((f"spec.disks[{i}].path", disk.path, True))
        elif source is not None and source.mode == "backing":
            found.append((f"spec.disks[{i}].volume.from.path", source.path, False))
    found += [
        (f"spec.boot.{key}", path, False) for key in ("kernel", "initrd") if (path := getattr(spec.boot, key))
    ]
    return found


def wanted_paths(domains: Iterable[Domain]) -> tuple[str, ...]:
    """Every file the domains use, once each: what to ask ``Hypervisor.environment`` about."""
    return tuple(dict.fromkeys(path for domain in domains for _, path, _ in domain_paths(domain.spec)))


def wanted_secrets(domains: Iterable[Domain]) -> tuple[str, ...]:
    """Every graphics password file the domains name, once each (read where definitions are sent)."""
    graphics = (domain.spec.graphics for domain in domains)
    return tuple(dict.fromkeys(g.password_file for g in graphics if g is not None and g.password_file))


def preflight(domains: Mapping[str, Domain], environment: HostEnvironment) -> Preflight:
    """Hold the desired domains of one host against its environment (see the module docstring)."""
    found = _Findings(unchecked=dict.fromkeys(environment.unchecked))
    for name, domain in domains.items():
        spec = domain.spec
        for index, interface in enumerate(spec.interfaces):
            where = f"{name}: spec.interfaces[{index}]"
            _check_network(found, where, interface, spec, environment)
            _check_bridge(found, where, interface, environment)
        for where, path, written in domain_paths(spec):
            fact = environment.paths.get(path, PathFact(None, note="not checked: not asked for"))
            _check_path(found, f"{name}: {where}", path, fact, fatal=spec.state == "running", written=written)
        if spec.graphics is not None and spec.graphics.password_file:
            _check_password(found, f"{name}: spec.graphics.passwordFile", spec.graphics, environment)
    return Preflight(tuple(found.errors), tuple(found.warnings), tuple(found.unchecked))


def _check_network(
    found: _Findings, where: str, interface: Interface, spec: DomainSpec, environment: HostEnvironment
) -> None:
    name, networks = interface.network, environment.networks
    if name is None or networks is None:
        return
    where += ".network"
    network = networks.get(name)
    if network is None:
        known = ", ".join(sorted(networks)) or "none"
        found.errors.append(f"{where}: network {name!r} does not exist on the host (networks: {known})")
        return
    if not network.active:
        found.problem(
            spec.state == "running",
            f"{where}: network {name!r} is not active, so the domain cannot start (virsh net-start {name})",
        )
    if spec.autostart and not network.autostart:
        found.warnings.append(
            f"{where}: network {name!r} does not start with the host but the domain does: it would "
            f"fail to start after a reboot (virsh net-autostart {name})"
        )


def _check_bridge(found: _Findings, where: str, interface: Interface, environment: HostEnvironment) -> None:
    name, bridges = interface.bridge, environment.bridges
    if name is None or bridges is None:
        return
    where += ".bridge"
    kind = bridges.get(name)
    if kind is None:
        found.errors.append(f"{where}: bridge {name!r} does not exist on the host")
    elif kind != "bridge":
        found.warnings.append(
            f"{where}: libvirt reports {name!r} as an interface of type {kind}, not a bridge "
            "(fine for an Open vSwitch bridge; a plain NIC cannot take guests)"
        )


def _check_path(
    found: _Findings, where: str, path: str, fact: PathFact, *, fatal: bool, written: bool
) -> None:
    if fact.exists is None:
        found.unchecked[f"{path}: {fact.note or 'not checked'}"] = None
        return
    if not fact.exists:
        found.errors.append(f"{where}: {path} does not exist on the host")
        return
    denied = fact.qemu_denied or (fact.qemu_cannot_write if written else None)
    if denied is not None:
        verb = "read and write" if written else "read"
        consequence = "the domain cannot start" if fatal else "the domain could not start"
        found.problem(fatal, f"{where}: QEMU cannot {verb} {path}: {denied}; {consequence}")


def _check_password(found: _Findings, where: str, graphics: Graphics, environment: HostEnvironment) -> None:
    """A password file the definition will be sent with: readable, one line, short enough."""
    path = graphics.password_file
    assert path is not None
    fact = environment.secrets.get(path)
    if fact is None:
        found.unchecked[f"{path}: not checked: a password file is read where definitions are sent"] = None
    elif fact.problem:
        found.errors.append(f"{where}: {path}: {fact.problem}; the definition could not be sent")
    elif fact.length > (limit := PASSWORD_LIMITS[graphics.type]):
        found.errors.append(
            f"{where}: {path}: the password is {fact.length} characters, longer than the {limit} "
            f"a {graphics.type} password can be"
        )
