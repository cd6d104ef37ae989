"""A Domain's ``cloudInit``: the NoCloud seed files it names, and their content read at load time.

The manifest names files (user-data, meta-data, network-config) relative to its own folder; they
are read when the manifests are loaded, within the manifest root and a size limit, like manifests.
Their content never reaches a plan, a saved plan, a snapshot, a log or ``/status``: user-data holds
passwords and keys. What is shown and recorded is the digest of the files (:attr:`Seed.digest`).

Without a metaData file, the seed's meta-data is generated from the domain's name (``instance-id``
and ``local-hostname``). The seed becomes the volume ``<domain>-cidata.iso`` of a pool of the
domain's host (``cloudInit.pool``, default the pool of its first volume disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from reconciler.spec.fieldtypes import Model, Name
from reconciler.spec.untrusted import FORBIDDEN

#: The most one seed file may hold: cloud-init reads the whole seed at every boot.
MAX_SEED_FILE_BYTES = 256 * 1024
#: The files of a seed, in the order they are written, by the names cloud-init looks for.
SEED_FILES = ("user-data", "meta-data", "network-config")
#: The digest shown and recorded: this many hex digits of the sha256 of the seed's files.
DIGEST_DIGITS = 16


def seed_volume_name(domain: str) -> str:
    """The volume a domain's seed is uploaded to, in its pool."""
    return f"{domain}-cidata.iso"


class SeedFile(Model):
    """A file of the seed, read from the manifest tree when the manifests are loaded."""

    file: Annotated[str, Field(min_length=1, max_length=4096)] = Field(
        description="Path of the file relative to this manifest's folder; it must lie inside the "
        "manifest root (symlinks resolved) and hold at most 256 KiB.",
    )

    @field_validator("file")
    @classmethod
    def _relative(cls, path: str) -> str:
        if path.startswith("/"):
            raise ValueError(f"{path!r} must be relative to the manifest's folder, not absolute")
        return path


class CloudInit(Model):
    """A cloud-init NoCloud seed for the domain's first boot: an ISO labelled ``cidata``, attached
    as a read-only cdrom."""

    user_data: SeedFile | None = Field(
        default=None,
        description="The user-data file (#cloud-config, a script...); left out: an empty user-data.",
    )
    meta_data: SeedFile | None = Field(
        default=None,
        description="The meta-data file; left out: instance-id and local-hostname set to the domain's name.",
    )
    network_config: SeedFile | None = Field(
        default=None, description="The network-config file (version 1 or 2); left out: none."
    )
    pool: Name | None = Field(
        default=None,
        description="Storage pool of the domain's host the seed volume (<domain>-cidata.iso) is "
        "uploaded to; default the pool of the domain's first volume disk.",
    )

    def files(self) -> dict[str, SeedFile]:
        """The files the manifest names, by their name in the seed."""
        named = zip(SEED_FILES, (self.user_data, self.meta_data, self.network_config), strict=True)
        return {name: ref for name, ref in named if ref is not None}

    def placement(self) -> CloudInit:
        """Only where the seed lives: what a domain's libvirt definition shows of it (the files
        are input, never state; their content is compared by digest)."""
        return self if not self.files() else CloudInit(pool=self.pool)


@dataclass(frozen=True)
class Seed:
    """A domain's seed as loaded: its files' bytes (never shown, not even by ``repr``) and digest."""

    domain: str
    pool: str
    files: tuple[tuple[str, bytes], ...] = field(repr=False)
    digest: str = ""

    @property
    def volume(self) -> str:
        """The seed volume's name in its pool."""
        return seed_volume_name(self.domain)

    @classmethod
    def of(cls, domain: str, pool: str, files: dict[str, bytes]) -> Seed:
        """The seed of ``files`` (by seed name), its meta-data generated when ``files`` has none."""
        content = dict(files)
        content.setdefault("user-data", b"")
        content.setdefault("meta-data", generated_meta_data(domain))
        ordered = tuple((name, content[name]) for name in SEED_FILES if name in content)
        return cls(domain, pool, ordered, seed_digest(ordered))


def generated_meta_data(domain: str) -> bytes:
    """The meta-data of a seed whose manifest names none: the domain's name as instance id and
    host name (JSON-quoted, so YAML reads a name such as ``1e5`` as a string)."""
    quoted = json.dumps(domain)
    return f"instance-id: {quoted}\nlocal-hostname: {quoted}\n".encode()


def seed_digest(files: tuple[tuple[str, bytes], ...]) -> str:
    """The short sha256 of a seed's files, each framed by its name and length (so no two seeds
    share a digest by moving bytes from one file to the next)."""
    digest = hashlib.sha256()
    for name, content in files:
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:DIGEST_DIGITS]


#: How cloud-init user-data starts (cloud-config, a script, an include list, a boothook, a template).
USER_DATA_MARKS = (
    b"#cloud-config",
    b"#!",
    b"#include",
    b"#cloud-boothook",
    b"#part-handler",
    b"## template:",
)


def is_user_data(content: bytes) -> bool:
    """Whether a file in the manifest tree is cloud-init user-data by its first line (so not a
    manifest, even named ``.yaml``)."""
    return content.startswith(USER_DATA_MARKS)


def referenced_files(domains: Iterable[tuple[CloudInit | None, str]]) -> set[str]:
    """The seed files the given ``cloudInit`` fields name, each as the path of its manifest file
    (relative to the manifest root) names files: the loader does not read them as manifests,
    though they may end in ``.yaml`` like one."""
    found = set()
    for cloud_init, manifest in domains:
        for ref in cloud_init.files().values() if cloud_init is not None else ():
            found.add(os.path.normpath(os.path.join(os.path.dirname(manifest), ref.file)))
    return found


def load_seed(
    domain: str, cloud_init: CloudInit, folder: Path, root: Path
) -> tuple[Seed | None, list[tuple[tuple[str, ...], str]]]:
    """Read the files a domain's ``cloudInit`` names (relative to ``folder``, inside ``root``, both
    resolved) into its seed; or None and each problem as (field path under ``spec.cloudInit``,
    message). The pool must have been resolved (see ``DomainSpec``)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    files: dict[str, bytes] = {}
    for (name, ref), key in zip(cloud_init.files().items(), _keys(cloud_init), strict=True):
        content = _read_seed_file(folder / ref.file, root)
        if isinstance(content, str):
            problems.append(((key, "file"), f"{ref.file}: {content}"))
        else:
            files[name] = content
    if problems or cloud_init.pool is None:
        return None, problems
    return Seed.of(domain, cloud_init.pool, files), problems


def _keys(cloud_init: CloudInit) -> list[str]:
    """The manifest keys of the files a ``cloudInit`` names, in seed order."""
    keys = ("userData", "metaData", "networkConfig")
    refs = (cloud_init.user_data, cloud_init.meta_data, cloud_init.network_config)
    return [key for key, ref in zip(keys, refs, strict=True) if ref is not None]


def _read_seed_file(path: Path, root: Path) -> bytes | str:
    """A seed file's bytes, or why it cannot be used: outside the manifest root, not a regular file
    (a FIFO would block), larger than :data:`MAX_SEED_FILE_BYTES`, unreadable."""
    if FORBIDDEN.search(str(path)):
        return "a control character in the path"
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:
        return f"cannot be resolved: {err}"
    if not resolved.is_relative_to(root) or resolved == root:
        return (
            f"outside the manifest root {root}: a manifest names files inside its own tree only "
            "(symlinks resolved)"
        )
    try:
        handle = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return "not a regular file"
            with open(handle, "rb", closefd=False) as stream:
                content = stream.read(MAX_SEED_FILE_BYTES + 1)
        finally:
            os.close(handle)
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    if len(content) > MAX_SEED_FILE_BYTES:
        return f"larger than {MAX_SEED_FILE_BYTES // 1024} KiB, the most a cloud-init seed file may hold"
    return content
