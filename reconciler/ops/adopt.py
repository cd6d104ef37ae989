"""Import (adoption), backup and restore of existing domains.

* :func:`import_domains` writes one manifest per live domain with every modelled field taken from
  libvirt, then marks the domain managed with libvirt's metadata call (no redefine, no restart).
* :func:`backup_domains` writes each domain's full persistent XML and a manifest of its disk images
  (path, size, sha256), copying the images too when asked (sparse-aware).
* :func:`restore_domains` defines domains from a backup, refusing those whose images are missing or
  changed, and never overwriting an existing domain.

Output folders are written in a temporary sibling and renamed into place, so a failure never leaves
half a backup or half an import behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from lxml import etree

from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.errors import AdoptionError, DomainXMLError, HostError
from reconciler.files.atomic import write_atomically
from reconciler.libvirtxml.ownership import OWNER_NS
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import API_VERSION, DomainSpec, Owner

CHUNK = 1024 * 1024
_ZERO = bytes(CHUNK)


class AdoptingHypervisor(Protocol):
    """The part of a Hypervisor that import, backup and restore need."""

    def observe(self) -> HostObservation: ...

    def define(self, xml: str) -> None: ...

    def set_owner(self, name: str, owner: Owner) -> None: ...


@dataclass
class Report:
    """What a command did, domain by domain, and what it refused."""

    done: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- folders


@contextmanager
def fresh_folder(target: Path, *, force: bool) -> Iterator[Path]:
    """A temporary folder that replaces ``target`` only when the block succeeds.

    ``target`` must not exist or be empty, unless ``force``.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not force:
        raise AdoptionError(f"{target} exists and is not empty (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    temporary.rename(target)


def _select(observed: HostObservation, names: Sequence[str]) -> list[DomainObservation]:
    known = {d.name: d for d in observed.domains}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise AdoptionError(f"no such domain on the host: {', '.join(unknown)}")
    return [known[name] for name in names] if names else sorted(known.values(), key=lambda d: d.name)


# -------------------------------------------------------------------------------------- import


def manifest_document(host: str, domain: DomainObservation) -> dict[str, Any]:
    """The Domain manifest that describes ``domain`` exactly as libvirt holds it."""
    parsed = parse_domain(
        domain.xml, state="running" if domain.active else "stopped", autostart=domain.autostart
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "Domain",
        "metadata": {"name": parsed.name, "host": host},
        "spec": parsed.spec.model_dump(mode="json", by_alias=True),
    }


@dataclass(frozen=True)
class ImportRequest:
    """What ``import`` was asked: the host's name, the folder for manifests, which domains (none:
    every unmanaged one), how a manifest's path is recorded in ownership, the git revision, force."""

    host: str
    out: Path
    names: Sequence[str]
    manifest_path: Callable[[Path], str]
    revision: str
    force: bool = False


def import_domains(hypervisor: AdoptingHypervisor, request: ImportRequest) -> Report:
    """Write a manifest per domain into ``out`` and mark each domain managed.

    Without names: every unmanaged domain. An already managed domain is refused unless ``force``.
    The manifests are written (atomically) before any domain is marked, so an error leaves the host
    as it was.
    """
    host, out, names, force = request.host, request.out, request.names, request.force
    observed = hypervisor.observe()
    chosen = _select(observed, names)
    report = Report()
    documents: list[tuple[DomainObservation, dict[str, Any]]] = []
    for domain in chosen:
        managed = OWNER_NS in domain.xml
        if managed and not names:
            continue  # "all unmanaged ones"
        if managed and not force:
            report.refused.append(f"{domain.name}: already managed (use --force to import it again)")
            continue
        try:
            documents.append((domain, manifest_document(host, domain)))
        except DomainXMLError as err:
            report.refused.append(f"{domain.name}: cannot be modelled: {err}")
    if not documents:
        if report.refused:
            return report
        raise AdoptionError("nothing to import: every domain on the host is managed already")
    with fresh_folder(out, force=force) as folder:
        for _, document in documents:
            name = document["metadata"]["name"]
            text = "# yaml-language-server: $schema=https://virt-reconcile.dev/schemas/manifest.schema.json\n"
            text += f"# imported by virt-reconcile from host {host}\n"
            text += yaml.safe_dump(document, sort_keys=False)
            write_atomically(folder / f"{name}.yaml", text, mode=0o644)
    for domain, document in documents:
        owner = Owner(
            manifest=request.manifest_path(out / f"{domain.name}.yaml"),
            revision=request.revision,
            spec_hash=DomainSpec.model_validate(document["spec"]).spec_hash(),
        )
        try:
            hypervisor.set_owner(domain.name, owner)
        except HostError as err:
            (out / f"{domain.name}.yaml").unlink(missing_ok=True)  # no manifest for an unmarked domain
            report.refused.append(f"{domain.name}: {err}")
            continue
        report.done.append(domain.name)
    return report


# -------------------------------------------------------------------------------------- backup


def _disk_paths(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    paths = []
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        path = source.get("file") or source.get("dev") if source is not None else None
        if path and path.startswith("/"):
            paths.append(path)
    return paths


def image_record(path: str, *, local: bool) -> dict[str, Any]:
    """Path, size and sha256 of a disk image (only where this machine can read it)."""
    record: dict[str, Any] = {"path": path, "size": None, "sha256": None, "present": None}
    if not local:
        return record
    file = Path(path)
    if not file.is_file():
        record["present"] = file.exists()  # a block device is present but not hashed
        return record
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    record.update(size=file.stat().st_size, sha256=digest.hexdigest(), present=True)
    return record


def sparse_copy(source: Path, target: Path, progress: Callable[[int], None] | None = None) -> None:
    """Copy a file keeping its holes: zero blocks become seeks, not writes."""
    size = source.stat().st_size
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            if chunk == _ZERO[: len(chunk)]:
                writer.seek(len(chunk), os.SEEK_CUR)
            else:
                writer.write(chunk)
            if progress is not None:
                progress(len(chunk))
        writer.truncate(size)


@dataclass(frozen=True)
class BackupRequest:
    """What ``backup`` was asked: the host's name, the target folder, which domains (none: all),
    whether the host is this machine (its images can be read), whether to copy them, force."""

    host: str
    out: Path
    names: Sequence[str]
    local: bool
    with_images: bool = False
    force: bool = False


def backup_domains(
    hypervisor: AdoptingHypervisor,
    request: BackupRequest,
    progress: Callable[[str, int, int], Callable[[int], None]] | None = None,
) -> Report:
    """Per domain: ``NAME/domain.xml`` and ``NAME/images.json``; ``NAME/images/`` with ``with_images``."""
    host, out, names, local = request.host, request.out, request.names, request.local
    with_images, force = request.with_images, request.force
    observed = hypervisor.observe()
    chosen = _select(observed, names)
    if with_images and not local:
        raise AdoptionError(f"--with-images needs the host to be this machine; {host} is remote")
    report = Report()
    with fresh_folder(out, force=force) as folder:
        for domain in chosen:
            target = folder / domain.name
            target.mkdir()
            write_atomically(target / "domain.xml", domain.xml)
            images = [image_record(path, local=local) for path in _disk_paths(domain.xml)]
            for number, image in enumerate(images):
                if with_images and image["present"] and image["size"] is not None:
                    copy = target / "images" / f"{number}-{Path(image['path']).name}"
                    copy.parent.mkdir(exist_ok=True)
                    step = progress(image["path"], image["size"], number) if progress else None
                    sparse_copy(Path(image["path"]), copy, step)
                    image["copy"] = str(copy.relative_to(target))
            manifest = {"host": host, "domain": domain.name, "active": domain.active, "images": images}
            write_atomically(target / "images.json", json.dumps(manifest, indent=2) + "\n")
            report.done.append(domain.name)
    return report


# ------------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class BackedUpDomain:
    """One domain of a backup."""

    name: str
    xml: str
    images: list[dict[str, Any]]


def read_backup(folder: Path, names: Sequence[str]) -> list[BackedUpDomain]:
    """Every domain of a backup folder (or those named), each checked to be domain XML."""
    if not folder.is_dir():
        raise AdoptionError(f"{folder}: no such backup folder")
    entries = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {p.name: p for p in entries}
    unknown = [name for name in names if name not in found]
    if unknown:
        raise AdoptionError(f"not in the backup {folder}: {', '.join(unknown)}")
    domains = []
    for name in names or sorted(found):
        entry = found[name]
        try:
            xml = (entry / "domain.xml").read_text(encoding="utf-8")
            parsed_name = etree.fromstring(xml.encode()).findtext("name")
            if etree.fromstring(xml.encode()).tag != "domain" or not parsed_name:
                raise ValueError("not a <domain> with a <name>")
            images = json.loads((entry / "images.json").read_text(encoding="utf-8"))["images"]
        except (OSError, ValueError, KeyError, etree.XMLSyntaxError) as err:
            raise AdoptionError(f"{entry}: unreadable backup entry: {err}") from err
        domains.append(BackedUpDomain(parsed_name, xml, images))
    return domains


def restore_domains(
    hypervisor: AdoptingHypervisor,
    backup: list[BackedUpDomain],
    *,
    local: bool,
    allow_missing_images: bool,
) -> Report:
    """Define each backed-up domain unless it exists, or its images are missing or changed."""
    existing = {d.name for d in hypervisor.observe().domains}
    report = Report()
    for domain in backup:
        if domain.name in existing:
            report.refused.append(f"{domain.name}: a domain with this name exists; never overwritten")
            continue
        problems = [] if allow_missing_images or not local else _image_problems(domain.images)
        if problems:
            report.refused.append(
                f"{domain.name}: {'; '.join(problems)} (--allow-missing-images to restore anyway)"
            )
            continue
        try:
            hypervisor.define(domain.xml)
        except HostError as err:
            report.refused.append(f"{domain.name}: {err}")
            continue
        report.done.append(domain.name)
    return report


def _image_problems(images: list[dict[str, Any]]) -> list[str]:
    problems = []
    for image in images:
        path = Path(image["path"])
        if image.get("present") is False:
            continue  # it was already missing when backed up: nothing to compare with
        if not path.exists():
            problems.append(f"image {path} is missing")
        elif image.get("sha256") and path.is_file():
            now = image_record(str(path), local=True)
            if now["sha256"] != image["sha256"]:
                problems.append(f"image {path} changed since the backup (sha256 differs)")
    return problems
