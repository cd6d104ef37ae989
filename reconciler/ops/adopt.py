"""Import (adoption), backup and restore of existing domains.

* :func:`import_domains` writes one manifest per live domain with every modelled field taken from
  libvirt, then marks the domain managed, and pending its first apply, with libvirt's metadata call
  (no redefine, no restart).
* :func:`backup_domains` writes each domain's full persistent XML and a manifest of its disk images
  (path, size, sha256), copying the images too when asked (sparse-aware).
* :func:`restore_domains` defines domains from a backup, refusing those whose images are missing or
  changed (and saying how to put a backed-up copy back), never overwriting an existing domain; a
  restored domain gets its autostart flag back and is started when it was running.

Output is written in a staging folder and moved into place file by file (:mod:`.staging`): a failure
leaves the output folder as it was, and ``--force`` replaces only the files of the domains written.
Backups hold the domains' secure values (graphics passwords), so they are private: files 0600,
folders 0700.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml
from lxml import etree

from reconciler.engine.hypervisor import DomainObservation, HostObservation, PoolObservation
from reconciler.errors import AdoptionError, DomainXMLError, HostError
from reconciler.files.atomic import fsync_directory, write_atomically
from reconciler.libvirtxml.ownership import OWNER_NS, marked_pending
from reconciler.libvirtxml.parse import parse_domain
from reconciler.ops.staging import PRIVATE, Staging, staged
from reconciler.spec.models import API_VERSION, DomainSpec, Owner
from reconciler.spec.sizes import KIB

CHUNK = 1024 * 1024
_ZERO = bytes(CHUNK)


class AdoptingHypervisor(Protocol):
    """The part of a Hypervisor that import, backup and restore need."""

    def observe(self) -> HostObservation: ...

    def define(self, xml: str) -> None: ...

    def set_owner(self, name: str, owner: Owner) -> None: ...

    def secure_xml(self, name: str) -> str | None: ...

    def set_autostart(self, name: str, autostart: bool) -> None: ...

    def start(self, name: str) -> None: ...


@dataclass
class Report:
    """What a command did, domain by domain, and what it refused."""

    done: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _select(observed: HostObservation, names: Sequence[str]) -> list[DomainObservation]:
    known = {d.name: d for d in observed.domains}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise AdoptionError(f"no such domain on the host: {', '.join(unknown)}")
    return [known[name] for name in names] if names else sorted(known.values(), key=lambda d: d.name)


# -------------------------------------------------------------------------------------- import


def manifest_document(
    host: str, domain: DomainObservation, pools: Sequence[PoolObservation] = ()
) -> dict[str, Any]:
    """The Domain manifest that describes ``domain`` exactly as libvirt holds it; a disk on a pool's
    volume gets the volume's size from ``pools`` (a definition names a volume, never its size)."""
    parsed = parse_domain(
        domain.xml, state="running" if domain.active else "stopped", autostart=domain.autostart
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "Domain",
        "metadata": {"name": parsed.name, "host": host},
        "spec": _sized_volumes(parsed.spec, pools).model_dump(mode="json", by_alias=True),
    }


def _sized_volumes(spec: DomainSpec, pools: Sequence[PoolObservation]) -> DomainSpec:
    """``spec`` with each volume disk's size as its pool reports it; DomainXMLError for a volume
    the host's pools do not hold (its size cannot be known, so no manifest can say it)."""
    sizes = {(pool.name, volume.name): volume.capacity for pool in pools for volume in pool.volumes}
    disks = []
    for disk in spec.disks:
        volume = disk.volume
        if volume is None:
            disks.append(disk)
            continue
        size = sizes.get((volume.pool, volume.name))
        if size is None:
            raise DomainXMLError(f"its disk {disk.target} is volume {volume.key}, not in its pool")
        whole = -(-size // KIB) * KIB  # a manifest's sizes are whole KiB
        disks.append(disk.model_copy(update={"volume": volume.model_copy(update={"size": whole})}))
    return spec.model_copy(update={"disks": tuple(disks)})


@dataclass(frozen=True)
class ImportRequest:
    """What ``import`` was asked: the host's name, the folder for manifests, which domains (none:
    every unmanaged one), how a manifest's path is recorded in ownership, the git revision, force,
    how long the pending mark protects an imported domain (None: until it is first applied), and
    the manifest root recorded as the owner."""

    host: str
    out: Path
    names: Sequence[str]
    manifest_path: Callable[[Path], str]
    revision: str
    force: bool = False
    expire: timedelta | None = None
    root: str = ""  # identity of the manifest root the imported manifests belong to


def pending_until(expire: timedelta | None, now: datetime | None = None) -> str:
    """When an import's pending mark lapses, ISO 8601 in UTC as the daemon writes times; "" for never."""
    if expire is None:
        return ""
    return ((now or datetime.now(UTC)) + expire).astimezone(UTC).isoformat(timespec="seconds")


def import_domains(hypervisor: AdoptingHypervisor, request: ImportRequest) -> Report:
    """Write a manifest per domain into ``out`` and mark each domain managed and pending.

    Without names: every unmanaged domain. An already managed domain is refused unless ``force``.
    Every manifest is written (staged) before any domain is marked, so an error leaves the host as it
    was; a manifest moves into ``out`` only once its domain is marked, replacing at most a file of
    the same name. The pending mark keeps a daemon from pruning the domain before its manifest is
    applied (until ``expire``, when given).
    """
    report = Report()
    documents = _import_documents(hypervisor.observe(), request, report)
    if not documents:
        if report.refused:
            return report
        raise AdoptionError("nothing to import: every domain on the host is managed already")
    until = pending_until(request.expire)
    with staged(request.out, force=request.force) as staging:
        for _, document in documents:
            text = "# yaml-language-server: $schema=https://virt-reconcile.dev/schemas/manifest.schema.json\n"
            text += f"# imported by virt-reconcile from host {request.host}\n"
            text += yaml.safe_dump(document, sort_keys=False)
            write_atomically(staging.folder / f"{document['metadata']['name']}.yaml", text, mode=0o644)
        for domain, document in documents:
            owner = Owner(
                manifest=request.manifest_path(request.out / f"{domain.name}.yaml"),
                revision=request.revision,
                spec_hash=DomainSpec.model_validate(document["spec"]).spec_hash(),
                root=request.root,
                host=request.host,
                pending=True,
                pending_until=until,
            )
            try:
                hypervisor.set_owner(domain.name, owner)
            except HostError as err:
                report.refused.append(f"{domain.name}: {err}")  # its manifest is never published
                continue
            staging.publish(f"{domain.name}.yaml")
            report.done.append(domain.name)
    return report


def _import_documents(
    observed: HostObservation, request: ImportRequest, report: Report
) -> list[tuple[DomainObservation, dict[str, Any]]]:
    """The manifest of each domain to import; the domains refused are added to ``report``."""
    names = request.names
    documents = []
    for domain in _select(observed, names):
        managed = OWNER_NS in domain.xml
        if managed and not names:
            continue  # "all unmanaged ones"
        if managed and not request.force:
            report.refused.append(f"{domain.name}: already managed (use --force to import it again)")
            continue
        try:
            documents.append((domain, manifest_document(request.host, domain, observed.pools)))
        except DomainXMLError as err:
            report.refused.append(f"{domain.name}: cannot be modelled: {err}")
    return documents


# -------------------------------------------------------------------------------------- backup


def _disk_paths(xml: str, volumes: Mapping[tuple[str, str], str]) -> list[str]:
    """The image of each disk: its file or device, or a pool volume's path (from ``volumes``)."""
    root = etree.fromstring(xml.encode())
    paths = []
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        path = source.get("file") or source.get("dev") if source is not None else None
        if source is not None and disk.get("type") == "volume":
            path = volumes.get((source.get("pool", ""), source.get("volume", "")))
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


def sparse_copy(
    source: Path, target: Path, progress: Callable[[int], None] | None = None, *, mode: int = 0o600
) -> None:
    """Copy a file keeping its holes: zero blocks become seeks, not writes. The copy is created with
    ``mode`` (the owner only by default: a disk image is as private as the guest's data).

    The copy and its folder entry are flushed to disk before this returns: the backup then records
    the image's sha256, which must not describe a copy a crash could still truncate.
    """
    size = source.stat().st_size
    with (
        source.open("rb") as reader,
        open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as writer,
    ):
        while chunk := reader.read(CHUNK):
            if chunk == _ZERO[: len(chunk)]:
                writer.seek(len(chunk), os.SEEK_CUR)
            else:
                writer.write(chunk)
            if progress is not None:
                progress(len(chunk))
        writer.truncate(size)
        writer.flush()
        os.fsync(writer.fileno())
    fsync_directory(target.parent)


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


Progress = Callable[[str, int, int], Callable[[int], None]]


def backup_domains(
    hypervisor: AdoptingHypervisor, request: BackupRequest, progress: Progress | None = None
) -> Report:
    """Per domain: ``NAME/domain.xml`` (read with its secure values: a backup restores a working
    domain) and ``NAME/images.json``; ``NAME/images/`` with ``with_images``. Files 0600, folders 0700.

    Every domain is staged before any is moved into ``out``; with ``force`` only the files of the
    domains backed up are replaced (and their image copies no longer listed removed).
    """
    observed = hypervisor.observe()
    chosen = _select(observed, request.names)
    volumes = {(pool.name, vol.name): vol.path for pool in observed.pools for vol in pool.volumes}
    if request.with_images and not request.local:
        raise AdoptionError(f"--with-images needs the host to be this machine; {request.host} is remote")
    report = Report()
    with staged(request.out, force=request.force, private=True) as staging:
        written = []
        for domain in chosen:
            xml = hypervisor.secure_xml(domain.name)
            if xml is None:
                report.refused.append(f"{domain.name}: undefined while the backup ran")
                continue
            _stage_backup(staging, request, domain, (xml, _disk_paths(xml, volumes)), progress)
            written.append(domain.name)
        for name in written:
            _drop_old_copies(request.out / name, staging.folder / name)
            staging.publish(name)
            report.done.append(name)
    return report


def _stage_backup(
    staging: Staging,
    request: BackupRequest,
    domain: DomainObservation,
    disks: tuple[str, list[str]],
    progress: Progress | None,
) -> None:
    """Write one domain's backup entry (its XML, its disks' images) into the staging folder."""
    xml, paths = disks
    folder = staging.folder / domain.name
    folder.mkdir(mode=PRIVATE)
    write_atomically(folder / "domain.xml", xml, mode=0o600)
    images = [image_record(path, local=request.local) for path in paths]
    for number, image in enumerate(images):
        if request.with_images and image["present"] and image["size"] is not None:
            copy = folder / "images" / f"{number}-{Path(image['path']).name}"
            copy.parent.mkdir(mode=PRIVATE, exist_ok=True)
            step = progress(image["path"], image["size"], number) if progress else None
            sparse_copy(Path(image["path"]), copy, step)
            image["copy"] = str(copy.relative_to(folder))
    record = {
        "host": request.host,
        "domain": domain.name,
        "active": domain.active,
        "autostart": domain.autostart,
        "images": images,
    }
    write_atomically(folder / "images.json", json.dumps(record, indent=2) + "\n", mode=0o600)


def _drop_old_copies(entry: Path, staged_entry: Path) -> None:
    """Remove the image copies an earlier backup of this domain wrote and the new one does not."""
    try:
        old = json.loads((entry / "images.json").read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no earlier backup of it here (or not one of ours): nothing we wrote to remove
    images = (entry / "images").resolve()
    for image in old if isinstance(old, list) else []:
        copy = image.get("copy") if isinstance(image, dict) else None
        if not isinstance(copy, str) or (staged_entry / copy).exists():
            continue
        path = (entry / copy).resolve()
        if path.parent == images and path.is_file():
            path.unlink()


# ------------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class BackedUpDomain:
    """One domain of a backup: its XML, its images, where the entry is (for the image copies), and
    whether it was running and started with the host when backed up."""

    name: str
    xml: str
    images: list[dict[str, Any]]
    folder: Path | None = None
    active: bool = False
    autostart: bool = False


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
            root = etree.fromstring(xml.encode())
            parsed_name = root.findtext("name")
            if root.tag != "domain" or not parsed_name:
                raise ValueError("not a <domain> with a <name>")
            record = json.loads((entry / "images.json").read_text(encoding="utf-8"))
            images = record["images"]
            active, autostart = bool(record.get("active")), bool(record.get("autostart"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, etree.XMLSyntaxError) as err:
            raise AdoptionError(f"{entry}: unreadable backup entry: {err}") from err
        domains.append(BackedUpDomain(parsed_name, xml, images, entry.resolve(), active, autostart))
    return domains


def restore_domains(
    hypervisor: AdoptingHypervisor,
    backup: list[BackedUpDomain],
    *,
    local: bool,
    allow_missing_images: bool,
) -> Report:
    """Define each backed-up domain unless it exists, or its images are missing or changed; then give
    it back its autostart flag and start it when it was running at the backup."""
    existing = {d.name for d in hypervisor.observe().domains}
    report = Report()
    for domain in backup:
        if domain.name in existing:
            report.refused.append(f"{domain.name}: a domain with this name exists; never overwritten")
            continue
        refusal = "" if allow_missing_images or not local else _image_refusal(domain)
        if refusal:
            report.refused.append(f"{domain.name}: {refusal}")
            continue
        try:
            hypervisor.define(marked_pending(domain.xml))  # not pruned again before git holds it
        except (HostError, DomainXMLError) as err:
            report.refused.append(f"{domain.name}: {err}")
            continue
        problem = _restore_state(hypervisor, domain)
        if problem:
            report.refused.append(f"{domain.name}: defined, but {problem}")
            continue
        report.done.append(domain.name)
    return report


def _restore_state(hypervisor: AdoptingHypervisor, domain: BackedUpDomain) -> str:
    """Set the autostart flag and start the domain as at the backup; what failed, or ""."""
    try:
        if domain.autostart:
            hypervisor.set_autostart(domain.name, True)
    except HostError as err:
        return f"its autostart flag was not set: {err}"
    try:
        if domain.active:
            hypervisor.start(domain.name)
    except HostError as err:
        return f"not started (it was running at the backup): {err}"
    return ""


def _image_refusal(domain: BackedUpDomain) -> str:
    """Why the domain's images stop a restore, with the commands that put the backed-up copies back;
    "" when they are all there, as backed up."""
    problems, commands = [], []
    for image in domain.images:
        path = Path(image["path"])
        if image.get("present") is False:
            continue  # it was already missing when backed up: nothing to compare with
        if not path.exists():
            problems.append(f"image {path} is missing")
        elif image.get("sha256") and path.is_file():
            if image_record(str(path), local=True)["sha256"] == image["sha256"]:
                continue
            problems.append(f"image {path} differs from the backup (sha256)")
        else:
            continue
        copy = domain.folder / image["copy"] if domain.folder is not None and image.get("copy") else None
        if copy is not None and copy.is_file():
            commands.append(f"cp --sparse=always {shlex.quote(str(copy))} {shlex.quote(str(path))}")
    if not problems:
        return ""
    text = "; ".join(problems) + " (--allow-missing-images defines it anyway)"
    if commands:
        text += "; the backup holds a copy, put it back with:\n      " + "\n      ".join(commands)
    return text
