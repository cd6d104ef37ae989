"""Checks that span documents (pure): one disk, one domain; no disk named as a seed; one Host entry
per hypervisor.

Each document can be valid alone and still unsafe beside another: two domains writing one disk
image corrupt it, and two Host entries reaching one hypervisor fight over its domains (one defines
what the other prunes). Both are manifest problems, reported with file and line before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import Problem
from reconciler.spec.cloudinit import seed_volume_name
from reconciler.spec.hosturi import UriRules
from reconciler.spec.models import Domain, Host

#: The line of a field path in a document, as the loader knows it.
LineOf = Callable[[tuple[str | int, ...]], int]


@dataclass(frozen=True)
class Placed:
    """A document with where it came from: its file and a way to find a field's line."""

    file: str
    line_of: LineOf


def shared_disks(domains: Iterable[tuple[str, Domain, Placed]]) -> list[Problem]:
    """Every disk path named by a second domain (on any host), pointing at the first one.

    Lines are looked up only for the problems found: finding a line composes its file again, which
    for thousands of clean documents would cost more than loading them.
    """
    first: dict[str, tuple[str, str, Placed, int]] = {}
    problems = []
    for host, domain, placed in domains:
        for index, disk in enumerate(domain.spec.disks):
            # A path may be shared storage, seen by every host; a volume lives in its host's pool.
            key = disk.path if disk.volume is None else f"{host}\0{disk.volume.key}"
            owner = first.setdefault(key or "", (host, domain.name, placed, index))
            if owner[:2] == (host, domain.name) and owner[3] == index:
                continue
            part = "path" if disk.volume is None else "volume"
            line = placed.line_of(("spec", "disks", index, part))
            field = f"spec.disks[{index}].{part}"
            if owner[:2] != (host, domain.name):
                where = f"{owner[2].file}:{owner[2].line_of(('spec', 'disks', owner[3], part))}"
                message = (
                    f"{disk.source} is already the disk of domain {owner[1]!r} on host {owner[0]!r} "
                    f"({where}): one disk image, one domain"
                )
                problems.append(Problem(placed.file, line, field, message))
            else:
                problems.append(Problem(placed.file, line, field, f"{disk.source} is named twice"))
    return problems


def seed_name_clashes(domains: Iterable[tuple[str, Domain, Placed]]) -> list[Problem]:
    """Every disk volume named as the cloud-init seed volume of a domain of its host
    (``<domain>-cidata.iso`` in the seed's pool): uploading the seed would overwrite the disk."""
    listed = list(domains)
    seeds = {
        (host, domain.spec.cloud_init.pool, seed_volume_name(domain.name)): (domain.name, placed)
        for host, domain, placed in listed
        if domain.spec.cloud_init is not None and domain.spec.cloud_init.pool is not None
    }
    problems = []
    for host, domain, placed in listed if seeds else ():
        for index, disk in enumerate(domain.spec.disks):
            found = seeds.get((host, disk.volume.pool, disk.volume.name)) if disk.volume is not None else None
            if found is None:
                continue
            seeded, where = found
            line = where.line_of(("spec", "cloudInit"))
            problems.append(
                Problem(
                    placed.file,
                    placed.line_of(("spec", "disks", index, "volume", "name")),
                    f"spec.disks[{index}].volume.name",
                    f"{disk.source} is the cloud-init seed volume of domain {seeded!r} on host {host!r} "
                    f"({where.file}:{line}): its seed would overwrite this disk; name the volume otherwise",
                )
            )
    return problems


def shared_hypervisors(hosts: Iterable[tuple[Host, Placed]]) -> list[Problem]:
    """Every Host entry whose URI reaches a hypervisor an earlier entry already reaches (lines
    looked up only for the problems found, as in :func:`shared_disks`)."""
    first: dict[str, tuple[str, Placed]] = {}
    problems = []
    for host, placed in hosts:
        key = host.spec.address.hypervisor_key
        owner, where = first.setdefault(key, (host.name, placed))
        if owner != host.name:
            problems.append(
                Problem(
                    placed.file,
                    placed.line_of(("spec", "uri")),
                    "spec.uri",
                    f"{host.spec.uri} reaches the same hypervisor as host {owner!r} "
                    f"({where.file}:{where.line_of(('spec', 'uri'))}): two Host entries would fight "
                    "over its domains",
                )
            )
    return problems


def checked_host(host: Host, file: str, root: Path, rules: UriRules) -> tuple[Host, str | None]:
    """``host`` (from ``file``, relative to ``root``) with its sandbox path resolved against its
    file's folder, and why manifests kept in ``root`` may not use its URI under ``rules`` (None
    when they may)."""
    uri, refusal = host.spec.address.checked(root, (root / file).parent, rules)
    if uri.text != host.spec.uri:
        host = host.model_copy(update={"spec": host.spec.model_copy(update={"uri": uri.text})})
    return host, refusal
