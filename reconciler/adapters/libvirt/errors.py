"""libvirt's errors as the project's: temporary (the way to the host failed: retry later) or
permanent (the request was refused: retrying the same input fails the same way).

Importing this module also stops libvirt from printing every error to stderr: ours are raised and
reported instead.
"""

from __future__ import annotations

import libvirt

from reconciler.errors import HostError, PermanentHostError, TemporaryHostError

#: Errors of the way to the host, not of the request: the same call may succeed later. Every other
#: code is permanent: AUTH_FAILED, NO_SUPPORT, INVALID_ARG, XML_ERROR, CONFIG_UNSUPPORTED,
#: OPERATION_INVALID, and INTERNAL_ERROR (the catch-all of a driver, e.g. QEMU refusing a config).
_TEMPORARY_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,  # socket refused or missing (daemon down), host unreachable, I/O
    libvirt.VIR_ERR_RPC,  # the connection broke mid-call
    libvirt.VIR_ERR_NO_CONNECT,  # from a transport (SSH handshake); libvirt's own: see below
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
    libvirt.VIR_ERR_RESOURCE_BUSY,
}
#: Sources whose INTERNAL_ERROR means a lost connection ("client socket is closed"), not a refusal.
_CONNECTION_SOURCES = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}


def _ignore_libvirt_errors(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised and reported instead."""


libvirt.registerErrorHandler(_ignore_libvirt_errors, None)


def is_temporary(err: libvirt.libvirtError) -> bool:
    """Whether a libvirt error is about reaching the host (retry later) rather than the request.

    NO_CONNECT raised by libvirt itself (no source: an unknown driver, a URI without one) is a
    mistake in the address; INTERNAL_ERROR is temporary only from the RPC layer (connection lost).
    """
    code: int = err.get_error_code()
    source: int = err.get_error_domain()
    if code == libvirt.VIR_ERR_NO_CONNECT:
        return bool(source != libvirt.VIR_FROM_NONE)
    if code == libvirt.VIR_ERR_INTERNAL_ERROR:
        return source in _CONNECTION_SOURCES
    return code in _TEMPORARY_CODES


def wrap(host: str, what: str, err: libvirt.libvirtError) -> HostError:
    """The project's error for a libvirt error: temporary (the daemon retries) or permanent."""
    message = f"{what}: {err.get_error_message() or err}"
    if is_temporary(err):
        return TemporaryHostError(host, message)
    return PermanentHostError(host, message)
