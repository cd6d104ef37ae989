"""A host's address as a value object: the one place that knows what ``sandbox:PATH`` means.

A Host manifest's ``spec.uri`` is either a libvirt connection URI (``qemu:///system``,
``qemu+ssh://hv1/system``, ``test+unix:///default?socket=...``) or ``sandbox:PATH``, the embedded
simulated host kept in a file. Everything that needs to tell them apart asks a :class:`HostURI`.

A URI comes from a pull request, and libvirt does what it says on this machine: the ``ext``
transport runs the command a ``command`` parameter names, ``socket``/``keyfile``/``pkipath`` pick
files, ``netcat`` picks the program run on the far side, and a test driver or sandbox path is a
file read (and, for a sandbox, written) as the reconciler's user. So a URI may use only the
transports that merely connect, no query parameter, user and host names that cannot pass for
options, and files inside the manifest root; only the operator widens that, through
:class:`UriRules` (command line or environment), never a manifest.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

SANDBOX_SCHEME = "sandbox"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: libvirt's remote transports that only open a connection: none runs a command the URI names.
DEFAULT_TRANSPORTS = frozenset({"unix", "tls", "tcp", "ssh", "libssh", "libssh2"})
#: A user or machine name that ssh cannot take for an option (no leading ``-``) and needs no quoting.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class UriRules:
    """What the operator lets Host URIs use beyond the defaults: query parameters (``socket``,
    ``keyfile``...) and transports (``ext``...), lower case. Set by the operator's command line or
    environment; a manifest that could widen them could run a command as the reconciler."""

    params: frozenset[str] = frozenset()
    transports: frozenset[str] = frozenset()

    @classmethod
    def of(cls, params: Iterable[str] = (), transports: Iterable[str] = ()) -> UriRules:
        """Rules from names as people write them (any case, blanks ignored)."""
        return cls(
            frozenset(name.strip().lower() for name in params if name.strip()),
            frozenset(name.strip().lower() for name in transports if name.strip()),
        )


#: Nothing beyond the defaults.
DEFAULT_URI_RULES = UriRules()


@dataclass(frozen=True)
class HostURI:
    """A parsed host address; ``text`` is exactly what the manifest says (after path resolution)."""

    text: str

    @classmethod
    def parse(cls, text: str) -> HostURI:
        """Check ``text`` is a libvirt URI or ``sandbox:PATH``; raise ``ValueError`` saying why not."""
        if not _SCHEME.match(text):
            raise ValueError(f"{text!r} is not a libvirt URI (e.g. qemu:///system) or sandbox:PATH")
        uri = cls(text)
        if uri.is_sandbox and not text[len(SANDBOX_SCHEME) + 1 :].strip():
            raise ValueError("sandbox: needs a state file path, e.g. sandbox:state/hv1.xml")
        return uri

    def __str__(self) -> str:
        return self.text

    @property
    def scheme(self) -> str:
        """The URI scheme: ``sandbox``, ``qemu``, ``qemu+ssh``, ``test+unix`` ..."""
        return self.text.split(":", 1)[0].lower()

    @property
    def driver(self) -> str:
        """The libvirt driver the URI names (``qemu``, ``test`` ...), without the transport."""
        return self.scheme.split("+", 1)[0]

    @property
    def transport(self) -> str | None:
        """The remote transport (``ssh``, ``tls``, ``unix``, ``tcp``, ``ext``, ``libssh`` ...), if any."""
        _, plus, transport = self.scheme.partition("+")
        return transport if plus else None

    @property
    def is_sandbox(self) -> bool:
        """Whether this is the embedded simulated host (libvirt's test driver loaded from a file)."""
        return self.scheme == SANDBOX_SCHEME

    @property
    def sandbox_path(self) -> Path:
        """The sandbox's state file; only for a sandbox URI."""
        if not self.is_sandbox:
            raise ValueError(f"{self.text!r} is not a sandbox URI")
        return Path(self.text[len(SANDBOX_SCHEME) + 1 :])

    @property
    def hostname(self) -> str | None:
        """The remote machine the URI names, or None for this machine."""
        if self.is_sandbox:
            return None
        return urlsplit(self.text).hostname or None

    @property
    def in_process(self) -> bool:
        """libvirt runs the driver inside this process (the sandbox; the test driver with neither a
        transport nor a host: ``test://hv1/default`` names a remote machine, reached over TLS like any
        other): calls are plain function calls, so concurrent reads gain nothing."""
        if self.is_sandbox:
            return True
        return self.driver == "test" and self.transport is None and self.hostname is None

    @property
    def is_local(self) -> bool:
        """The hypervisor is a real one on this machine (no host part, or localhost): its files,
        swap and /proc can be looked at directly. Test-driver hosts simulate a machine, so never."""
        return self.driver not in ("test", SANDBOX_SCHEME) and self.hostname in (None, "localhost")

    @property
    def hypervisor_key(self) -> str:
        """What tells one hypervisor from another, whatever the spelling: the sandbox's file, or the
        driver, machine, instance path (system/session) and socket; not the transport or the user
        (``qemu+ssh://root@hv1/system`` and ``qemu+tls://hv1/system`` reach the same libvirtd)."""
        if self.is_sandbox:
            return f"sandbox:{self.sandbox_path}"
        parts = urlsplit(self.text)
        socket = dict(parse_qsl(parts.query)).get("socket", "")
        host = self.hostname or ""
        if host in ("localhost", "127.0.0.1", "::1"):
            host = ""
        return f"{self.driver}://{host.lower()}{parts.path.rstrip('/') or '/'}?socket={socket}"

    def checked(self, root: Path, folder: Path, rules: UriRules) -> tuple[HostURI, str | None]:
        """This URI with a sandbox path resolved against ``folder`` (the manifest's folder), and why
        manifests kept in ``root`` (resolved) may not use it under ``rules``, or None."""
        try:
            uri = self.resolved(folder)
        except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
            return self, f"the sandbox path cannot be resolved: {err}"
        if uri.is_sandbox:
            return uri, _outside(uri.sandbox_path, root, "the sandbox state file")
        try:
            parts = urlsplit(uri.text)
            _ = parts.port
        except ValueError as err:
            return uri, f"not a valid URI: {err}"
        refusal = _transport_refusal(uri.transport, rules) or _name_refusal(parts)
        return uri, refusal or _query_refusal(parts, rules) or _test_driver_refusal(uri, parts, root)

    def resolved(self, base: Path) -> HostURI:
        """A sandbox path made absolute against ``base`` (the manifest's folder); others unchanged."""
        if not self.is_sandbox:
            return self
        path = self.sandbox_path
        if not path.is_absolute():
            path = base / path
        return HostURI(f"{SANDBOX_SCHEME}:{path.resolve()}")


def _outside(path: Path, root: Path, what: str) -> str | None:
    """Why ``path`` (symlinks resolved) is not a file inside ``root``, or None when it is."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:
        return f"{what} {path} cannot be resolved: {err}"
    if resolved.is_relative_to(root) and resolved != root:
        return None
    return (
        f"{what} {path} is outside the manifest root {root}: a manifest names files inside its own "
        "tree only (symlinks resolved)"
    )


def _transport_refusal(transport: str | None, rules: UriRules) -> str | None:
    """Why the remote transport may not be used, or None: only those that merely connect, unless
    the operator allows another."""
    if transport is None or transport in DEFAULT_TRANSPORTS or transport in rules.transports:
        return None
    why = "runs a command the URI names" if transport == "ext" else "is not a transport allowed by default"
    allowed = ", ".join(sorted(DEFAULT_TRANSPORTS))
    return (
        f"transport {transport!r} {why} ({allowed} are); only the operator may allow it "
        f"(--allow-uri-transport {transport})"
    )


def _name_refusal(parts: SplitResult) -> str | None:
    """Why the user or machine name may not be used (a leading ``-`` would reach ssh as an option,
    a password does not belong in git), or None."""
    if parts.password is not None:
        return "a password in the URI: use an ssh key or a libvirt client certificate instead"
    if parts.username is not None and not _NAME.match(parts.username):
        return f"user name {parts.username!r} is not a plain name (letters, digits, . _ -, no leading -)"
    host = parts.hostname
    if host is None or _NAME.match(host):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"machine name {host!r} is not a host name or an IP address"
    return None


def _query_refusal(parts: SplitResult, rules: UriRules) -> str | None:
    """Why a query parameter may not be used, or None. libvirt splits parameters at ``&`` and ``;``,
    decodes ``%xx`` and ignores case: so does this."""
    if parts.fragment:
        return "a libvirt URI has no #fragment"
    for item in re.split("[&;]", parts.query):
        name = unquote(item.partition("=")[0]).strip().lower()
        if item and name not in rules.params:
            return (
                f"query parameter {name!r} is refused: URI parameters choose commands, sockets and "
                f"keys on this machine, so only the operator may allow one (--allow-uri-param {name})"
            )
    return None


def _test_driver_refusal(uri: HostURI, parts: SplitResult, root: Path) -> str | None:
    """Why a test driver URI may not be used, or None: its path is a file the driver reads, so it
    must lie inside the manifest root, and a libvirtd elsewhere may open only its ``/default``."""
    if uri.driver != "test" or parts.path == "/default":
        return None
    if uri.transport is None and uri.hostname is None:
        return _outside(Path(unquote(parts.path)), root, "the test driver's node file")
    return "the test driver behind a libvirtd opens only /default here: another path is a file it reads"
