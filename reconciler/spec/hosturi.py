"""A host's address as a value object: the one place that knows what ``sandbox:PATH`` means.

A Host manifest's ``spec.uri`` is either a libvirt connection URI (``qemu:///system``,
``qemu+ssh://hv1/system``, ``test+unix:///default?socket=...``) or ``sandbox:PATH``, the embedded
simulated host kept in a file. Everything that needs to tell them apart asks a :class:`HostURI`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

SANDBOX_SCHEME = "sandbox"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


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

    def resolved(self, base: Path) -> HostURI:
        """A sandbox path made absolute against ``base`` (the manifest's folder); others unchanged."""
        if not self.is_sandbox:
            return self
        path = self.sandbox_path
        if not path.is_absolute():
            path = base / path
        return HostURI(f"{SANDBOX_SCHEME}:{path.resolve()}")
