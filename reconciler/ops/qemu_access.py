"""Can QEMU open a domain's files? Computed from modes and owners, for a user other than ours.

For ``qemu:///system`` QEMU runs as the user qemu.conf names (``user = …``; Debian's default is
libvirt-qemu), not as virt-reconcile, so ``os.access`` (which answers for this process) cannot
tell. This module works it out from each path component's stat, the way the kernel would:

- every folder on the way must be searchable (x) by the QEMU user's uid or one of its groups
  (qemu.conf's ``group`` plus the user's own groups, which libvirt gives the QEMU process);
- the file itself must be readable (a kernel, an initrd) or readable and writable (a disk),
  unless libvirt hands the file to the QEMU user when it starts the domain: with
  ``dynamic_ownership`` (on by default) it does so for disks, kernels and initrds, but never for
  the folders above them. That is why a guest kernel under ``/root`` (mode 700) fails to start
  while a mode-600 kernel in ``/var/lib/libvirt/images`` boots.

Not considered: POSIX ACLs (a folder only an ACL opens is reported as closed), SELinux and
AppArmor labels, root-squashing network file systems, and a domain's own ``<seclabel>`` override.
User root is taken to open anything.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.engine.hypervisor import PathFact

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
#: libvirt's built-in user when qemu.conf sets none: Debian's build, then Fedora's and RHEL's.
DEFAULT_USERS = ("libvirt-qemu", "qemu")
SEARCH = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
WRITE = (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)
NOT_CONSIDERED = "POSIX ACLs, SELinux and AppArmor are not considered"


@dataclass(frozen=True)
class QemuIdentity:
    """Who QEMU runs as: the user, its uid and every gid of the process, and whether libvirt hands
    the domain's files to that user when it starts the domain (qemu.conf ``dynamic_ownership``)."""

    user: str
    uid: int
    gids: frozenset[int]
    dynamic_ownership: bool = True


def _setting(text: str, key: str) -> str | None:
    """A qemu.conf setting's value (quotes removed), ignoring comments; None when not set."""
    match = re.search(rf'^[ \t]*{key}[ \t]*=[ \t]*("([^"]*)"|\S+)', text, re.MULTILINE)
    if match is None:
        return None
    return match.group(2) if match.group(2) is not None else match.group(1)


def qemu_conf_user(conf: Path = QEMU_CONF) -> str:
    """The user qemu.conf names (``user = "…"``), else the first of libvirt's usual built-in users
    that exists here (libvirt-qemu on Debian, qemu on Fedora), else libvirt-qemu."""
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    found = (user for user in DEFAULT_USERS if _account(user) is not None)
    return _setting(text, "user") or next(found, DEFAULT_USERS[0])


def _account(name: str) -> pwd.struct_passwd | None:
    """A user by name, or by number in libvirt's ``+UID`` form."""
    try:
        return pwd.getpwuid(int(name[1:])) if name.startswith("+") else pwd.getpwnam(name)
    except (KeyError, ValueError):
        return None


def _gid(name: str | None, default: int) -> int:
    """A group by name or ``+GID``; ``default`` (the user's own group) when unset or unknown."""
    if not name:
        return default
    try:
        return int(name[1:]) if name.startswith("+") else grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        return default


def identity_of(account: pwd.struct_passwd, group: int, *, dynamic_ownership: bool) -> QemuIdentity:
    """The identity of a process libvirt starts as ``account``: its group plus the user's groups."""
    groups = {group, account.pw_gid} | {g.gr_gid for g in grp.getgrall() if account.pw_name in g.gr_mem}
    return QemuIdentity(account.pw_name, account.pw_uid, frozenset(groups), dynamic_ownership)


def qemu_identity(conf: Path = QEMU_CONF) -> QemuIdentity | None:
    """QEMU's identity for ``qemu:///system`` from qemu.conf; None when its user does not exist here."""
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    account = _account(qemu_conf_user(conf))
    if account is None:
        return None
    dynamic = (_setting(text, "dynamic_ownership") or "1").strip() != "0"
    return identity_of(account, _gid(_setting(text, "group"), account.pw_gid), dynamic_ownership=dynamic)


def session_identity() -> QemuIdentity:
    """QEMU's identity for ``qemu:///session``: the calling user, who owns the files it uses."""
    account = pwd.getpwuid(os.getuid())
    return identity_of(account, account.pw_gid, dynamic_ownership=False)


def allows(info: os.stat_result, who: QemuIdentity, bits: tuple[int, int, int]) -> bool:
    """Whether the owner, group or other bits that apply to ``who`` grant ``bits`` (as the kernel
    picks them: the owner's bits alone when ``who`` owns the file, else the group's, else other's)."""
    if who.uid == 0:
        return True
    owner, group, other = bits
    if info.st_uid == who.uid:
        return bool(info.st_mode & owner)
    if info.st_gid in who.gids:
        return bool(info.st_mode & group)
    return bool(info.st_mode & other)


def _describe(path: Path, info: os.stat_result) -> str:
    owner = f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)}"
    return f"{path} (mode {stat.S_IMODE(info.st_mode):o}, owner {owner})"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _folders(path: Path) -> list[Path]:
    """Every folder entered to reach ``path``: those written, and those of the symlink-free path."""
    folders = list(reversed(path.parents))
    real = Path(os.path.realpath(path))
    if real != path:
        folders += [folder for folder in reversed(real.parents) if folder not in folders]
    return folders


def qemu_denied(path: Path, who: QemuIdentity, bits: tuple[int, int, int] = READ) -> str | None:
    """Why QEMU, running as ``who``, could not open the existing file ``path`` for ``bits``; None
    when it could. Raises ``OSError`` when this process cannot look at a component itself."""
    for folder in _folders(path):
        info = os.stat(folder)
        if not allows(info, who, SEARCH):
            return f"folder {_describe(folder, info)} is not searchable by {who.user}"
    if who.dynamic_ownership:
        return None  # libvirt hands the file itself to the QEMU user when the domain starts
    info = os.stat(path)
    if not allows(info, who, bits):
        what = "writable" if bits == WRITE else "readable"
        return f"{_describe(path, info)} is not {what} by {who.user} (qemu.conf: dynamic_ownership = 0)"
    return None


def local_path_fact(path: str, who: QemuIdentity | None) -> PathFact:
    """Whether ``path`` exists on this machine and whether QEMU (``who``; None: not checked) may
    read it and write it."""
    file = Path(path)
    try:
        os.stat(file)
        denied = qemu_denied(file, who, READ) if who is not None else None
        cannot_write = qemu_denied(file, who, WRITE) if who is not None else None
    except (FileNotFoundError, NotADirectoryError):
        return PathFact(exists=False)
    except OSError as err:
        return PathFact(exists=None, note=f"not checked: virt-reconcile cannot look at it ({err.strerror})")
    return PathFact(exists=True, qemu_denied=denied, qemu_cannot_write=cannot_write)
