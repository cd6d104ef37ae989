"""The closed set of plan actions, and what a plan reports but will not touch (pure, a leaf).

Both the planner and the policy read these; neither imports the other's module for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from reconciler.engine.diff import Change
from reconciler.spec.models import DomainSpec


class ActionKind(StrEnum):
    """The closed set of things a plan can do to a domain."""

    DEFINE = "define"
    UPDATE = "update"
    BALLOON = "balloon"
    START = "start"
    STOP = "stop"
    UNDEFINE = "undefine"
    MOVE = "move"  # a domain whose host changed: out of one host (stop, undefine), into another
    RESTART = "restart"  # a running domain whose definition waits for a restart (apply --restart-pending)
    POOL = "pool"  # a storage pool made as its manifest says: defined, built, started, autostarted
    CREATE_VOLUME = "create-volume"  # a disk's volume made in its pool (empty, overlay or clone)
    RESIZE_VOLUME = "resize-volume"  # a disk's volume grown (live when its domain runs)
    DELETE_VOLUME = "delete-volume"  # an undefined domain's volume, with deleteVolumes: true
    RESEED = "reseed"  # a changed cloud-init seed, written for the domain's next boot

    @property
    def symbol(self) -> str:
        """The one-character mark plan output shows before the action."""
        return _SYMBOLS[self]


_SYMBOLS = {
    ActionKind.DEFINE: "+",
    ActionKind.UPDATE: "~",
    ActionKind.BALLOON: "~",
    ActionKind.START: ">",
    ActionKind.STOP: "<",
    ActionKind.UNDEFINE: "-",
    ActionKind.MOVE: "⇄",
    ActionKind.RESTART: "⟳",
    ActionKind.POOL: "+",
    ActionKind.CREATE_VOLUME: "+",
    ActionKind.RESIZE_VOLUME: "~",
    ActionKind.DELETE_VOLUME: "-",
    ActionKind.RESEED: "~",
}


class Phase(IntEnum):
    """Apply order: everything that frees resources first, everything that takes them last."""

    UNDEFINE = 0
    DELETE_VOLUME = 1  # after the undefine of the domain that used it
    STOP = 2
    BALLOON_DOWN = 3
    UPDATE_SHRINK = 4
    POOL = 5  # pools before the volumes made in them
    VOLUME_GROW = 6  # a grow phase: resources taken only after everything above freed theirs
    UPDATE_GROW = 7
    CREATE_VOLUME = 8  # volumes before the domains that use them are defined
    DEFINE = 9
    RESEED = 10
    BALLOON_UP = 11
    START = 12
    RESTART = 13  # last: graceful shutdown then start, a few domains of a host at a time


@dataclass(frozen=True)
class VolumeChange:
    """What a volume action does to one volume (sizes in bytes)."""

    pool: str
    name: str
    capacity: int  # the virtual size afterwards (0 for a delete)
    previous: int = 0  # the virtual size before (0 for a new volume)
    allocation: int = 0  # what the pool must have free now for it (storage.free): a clone its whole size
    source: str = ""  # the base image it is made from ("" for an empty volume)
    mode: str = ""  # backing | clone ("" for an empty volume)
    format: str = ""  # the volume's image format (qcow2, raw): what a create makes, what a resize keeps


@dataclass(frozen=True)
class SeedUpload:
    """What a reseed writes: a cloud-init seed image, known to people only by its digest."""

    digest: str
    image: bytes = field(repr=False)  # holds the user-data: never in a plan, a log or a repr


@dataclass(frozen=True)
class Action:
    """One step of a plan. ``xml`` is what define/update will define; ``memory`` the balloon targets.

    A move is two actions of kind MOVE, one per host: out of the source (``xml`` None: stop, then
    undefine, disks untouched) and into the target (``xml`` set: define; a START follows when the
    domain runs). ``peer`` names the other host.
    """

    kind: ActionKind
    host: str
    domain: str
    phase: Phase
    changes: tuple[Change, ...] = ()
    restart: bool = False
    reason: str = ""
    xml: str | None = None
    autostart: bool | None = None
    spec: DomainSpec | None = None  # define/update: the spec the domain will have afterwards
    config_memory: int | None = None
    live_memory: int | None = None
    stop_first: bool = False
    peer: str = ""  # a move: the other host
    volume: VolumeChange | None = None  # a volume action: the volume and its sizes
    seed: SeedUpload | None = None  # a reseed: the image it uploads into ``volume`` (never shown or saved)

    @property
    def moves_in(self) -> bool:
        """Whether this is the target half of a move (a define on the new host)."""
        return self.kind is ActionKind.MOVE and self.xml is not None

    @property
    def releases(self) -> bool:
        """Whether this action takes a domain off its host: an undefine, or the source half of a move."""
        return self.kind is ActionKind.UNDEFINE or (self.kind is ActionKind.MOVE and self.xml is None)

    @property
    def asks_first(self) -> bool:
        """Whether a person at a terminal is asked before it runs: it takes a domain off its host,
        or deletes a volume (the one step that loses data for good)."""
        return self.releases or self.kind is ActionKind.DELETE_VOLUME


@dataclass(frozen=True)
class Orphan:
    """A managed domain that no manifest names any more; ``reason`` says why it is kept (or goes)."""

    host: str
    domain: str
    running: bool
    delete: bool
    reason: str = ""


@dataclass(frozen=True)
class Held:
    """A domain the manifests want here that this plan will not touch yet, and why (a move that
    cannot be done safely now: its other host is not in the run, blocked, or could not be seen), or
    a managed domain a revision this run does not contain wrote (a stale run must not undo it)."""

    host: str
    domain: str
    reason: str
    peer: str = ""  # the host that must join the run for the move to go ahead ("" for other reasons)
    revision: str = ""  # held for the newer revision that wrote it: that commit ("" for other reasons)


@dataclass(frozen=True)
class Conflict:
    """A manifest names a domain that exists on the host but is not ours: never overwritten."""

    host: str
    domain: str
    reason: str
