"""Where the reconciler keeps state of its own on this machine (the plan signing key, local locks).

One lookup for every user of it: ``$VIRT_RECONCILE_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``
(``StateDirectory=`` in a unit), else ``$XDG_STATE_HOME/virt-reconcile``, else
``~/.local/state/virt-reconcile``.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "VIRT_RECONCILE_STATE_DIR"


def state_folder() -> Path | None:
    """This user's (or service's) state folder; None without any of the above (no home directory)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit)
    systemd = os.environ.get("STATE_DIRECTORY")  # set by StateDirectory= in a systemd unit
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore a relative path
        return Path(xdg) / "virt-reconcile"
    try:
        return Path.home() / ".local" / "state" / "virt-reconcile"
    except RuntimeError:
        return None
