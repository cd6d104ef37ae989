"""Whether drift in a managed domain's run state is corrected: ``spec.runStrategy`` (pure).

libvirt says why a domain is off (``DomainObservation.reason``), so the strategies can tell a guest
that shut itself down from a crash or a destroy by hand:

* ``always``: start it whatever stopped it (the manifest says running, so it runs);
* ``rerunOnFailure``: start it after a crash or a failure, or when nothing says why it is off (it
  never ran, or libvirtd restarted since); leave it off when the guest shut itself down, an operator
  destroyed or saved it, or it was migrated away or reverted to a snapshot. libvirt forgets that
  reason when libvirtd restarts or the host reboots, so a pass that sees it records it in the
  ownership (``offOnPurpose``, a metadata write: :func:`off_on_purpose`), and an unknown reason
  with that record leaves the domain off too; the record goes once the domain runs again;
* ``manual``: never start or stop it once defined (the first define starts it when state is running);
* ``halted``: keep it off.

The strategy lives only in git (no XML carries it), so it never is a change to apply by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.engine.hypervisor import DomainObservation
from reconciler.spec.models import DomainSpec

#: Why a domain is off when someone or something meant it: rerunOnFailure leaves it off.
ON_PURPOSE = frozenset({"shutdown", "destroyed", "saved", "migrated", "from_snapshot"})
#: libvirt does not know why the domain is off (libvirtd restarted, the host rebooted, never started).
NOT_KNOWN = frozenset({"unknown", ""})


@dataclass(frozen=True)
class Settled:
    """One domain's specs once its run strategy is applied: ``desired.state`` is the run state to
    reach (what it is when the strategy leaves it alone), and ``why`` says why a stopped domain is
    started again ("" when it is not)."""

    current: DomainSpec
    desired: DomainSpec
    why: str = ""
    off_on_purpose: str = ""  # what the ownership is to record (Owner.off_on_purpose)


def off_on_purpose(spec: DomainSpec, live: DomainObservation, recorded: str = "") -> str:
    """Why rerunOnFailure leaves the shut-off domain ``live`` off: libvirt's reason when it says
    someone meant it, else the one ``recorded`` in its ownership when libvirt no longer knows (a
    libvirtd restart, a host reboot); "" when it runs, crashed or failed, or under another strategy."""
    if spec.strategy != "rerunOnFailure" or live.active:
        return ""
    if live.reason in ON_PURPOSE:
        return live.reason
    return recorded if live.reason in NOT_KNOWN else ""


def wanted_state(spec: DomainSpec, live: DomainObservation, recorded: str = "") -> str | None:
    """The run state ``spec``'s strategy wants for the defined domain ``live``: "running",
    "stopped", or None to leave it as it is. ``recorded``: why it was seen off on purpose before."""
    match spec.strategy:
        case "halted":
            return "stopped"
        case "manual":
            return None
        case "rerunOnFailure" if off_on_purpose(spec, live, recorded):
            return None
    return spec.state


def settle(current: DomainSpec, desired: DomainSpec, live: DomainObservation, recorded: str = "") -> Settled:
    """``current`` (read from libvirt) and ``desired`` (the manifest's) made comparable: both with
    the manifest's strategy, and the desired run state the one the strategy wants; ``recorded`` is
    the domain's off-on-purpose record, and the result says what it is to become."""
    if current.run_strategy != desired.run_strategy:  # a copy only when it changes (thousands a plan)
        current = current.model_copy(update={"run_strategy": desired.run_strategy})
    state = wanted_state(desired, live, recorded) or current.state
    why = ""
    if state == "running" and current.state == "stopped":
        off = f"shut off ({live.reason})" if live.reason else "shut off"
        why = f"{off}; runStrategy {desired.strategy} starts it"
    off_now = off_on_purpose(desired, live, recorded)
    if state != desired.state:
        desired = desired.model_copy(update={"state": state})
    return Settled(current, desired, why, off_now)
