"""spec.runStrategy: how it relates to state in the manifest, and the start/stop it decides for every
lifecycle reason libvirt gives (pure: hand-made observations, no libvirt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.runstrategy import ON_PURPOSE, wanted_state
from reconciler.errors import ManifestError
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import DomainSpec, Owner
from tests.helpers import domain_model, host_yaml, observed_domain, write

OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
GiB = 1024**3
#: Every shut-off reason the adapter names (libvirt's VIR_DOMAIN_SHUTOFF_*), and "" (not known).
SHUTOFF_REASONS = (
    "unknown",
    "shutdown",
    "destroyed",
    "crashed",
    "migrated",
    "saved",
    "failed",
    "from_snapshot",
    "daemon",
    "",
)


def off(name: str = "web", reason: str = "shutdown", **spec: object) -> DomainObservation:
    """A managed domain that is shut off, for ``reason``."""
    seen = observed_domain(name, OWNER, active=False, **spec)
    return DomainObservation(seen.name, seen.xml, False, False, "shutoff", reason, -1)


def running(name: str = "web", **spec: object) -> DomainObservation:
    seen = observed_domain(name, OWNER, active=True, **spec)
    return DomainObservation(seen.name, seen.xml, True, False, "running", "", 7)


def plan(observed: list[DomainObservation], **spec: object) -> HostPlan:
    wanted = domain_model("web", **spec)
    return build_host_plan(
        DesiredHost("hv1", "test:///", {"web": wanted}, lambda _name: OWNER),
        HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed)),
    )


def kinds(host: HostPlan) -> list[str]:
    return [action.kind.value for action in host.actions]


# ------------------------------------------------------------------------------- the manifest


def test_state_and_run_strategy_default_to_each_other():
    assert DomainSpec.model_validate({"memory": "1GiB"}).strategy == "always"
    assert DomainSpec.model_validate({"memory": "1GiB", "state": "stopped"}).strategy == "halted"
    halted = DomainSpec.model_validate({"memory": "1GiB", "runStrategy": "halted"})
    assert (halted.state, halted.strategy) == ("stopped", "halted")
    for strategy in ("rerunOnFailure", "manual"):
        assert DomainSpec.model_validate({"memory": "1GiB", "runStrategy": strategy}).state == "running"
    manual_off = DomainSpec.model_validate({"memory": "1GiB", "runStrategy": "manual", "state": "stopped"})
    assert (manual_off.state, manual_off.strategy) == ("stopped", "manual")


def test_a_spec_read_back_from_libvirt_round_trips_whatever_its_state():
    # No XML carries the strategy: a spec read from libvirt has none, so changing its state (as the
    # parse does for a running domain) never makes it contradict itself when dumped and read again.
    stopped = DomainSpec.model_validate({"memory": "1GiB", "state": "stopped"})
    running = stopped.model_copy(update={"state": "running"})
    assert DomainSpec.model_validate(running.model_dump(mode="json", by_alias=True)).strategy == "always"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "state: stopped\n  runStrategy: always",
            "runStrategy always keeps the domain running, but state is stopped",
        ),
        (
            "state: stopped\n  runStrategy: rerunOnFailure",
            "runStrategy rerunOnFailure keeps the domain running, but state is stopped",
        ),
        (
            "state: running\n  runStrategy: halted",
            "runStrategy halted keeps the domain off, but state is running",
        ),
        ("runStrategy: sometimes", "spec.runStrategy: Input should be 'always', 'rerunOnFailure', 'manual'"),
    ],
)
def test_a_contradictory_or_unknown_strategy_names_file_line_and_field(
    tmp_path: Path, spec: str, message: str
):
    write(tmp_path, "hosts.yaml", host_yaml())
    write(
        tmp_path,
        "web.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: web}\nspec:\n"
        f"  memory: 1GiB\n  {spec}\n",
    )
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    [problem] = info.value.problems
    line = 6 + spec.count("\n")  # the runStrategy line: the last of the spec
    assert (problem.file, problem.line, problem.field) == ("web.yaml", line, "spec.runStrategy")
    assert message in str(problem)


# ------------------------------------------------------------------------------- the decision


@pytest.mark.parametrize("reason", SHUTOFF_REASONS)
def test_each_strategy_on_a_domain_shut_off_for_each_reason(reason: str):
    always = plan([off(reason=reason)])
    assert kinds(always) == ["start"], "always starts it whatever stopped it"
    assert (
        always.actions[0].reason
        == (f"shut off ({reason})" if reason else "shut off") + "; runStrategy always starts it"
    )
    rerun = plan([off(reason=reason)], runStrategy="rerunOnFailure")
    on_purpose = reason in {"shutdown", "destroyed", "saved", "migrated", "from_snapshot"}
    assert kinds(rerun) == ([] if on_purpose else ["start"])
    assert kinds(plan([off(reason=reason)], runStrategy="manual")) == []
    assert kinds(plan([off(reason=reason, state="stopped")], state="stopped")) == []  # halted


def test_rerun_on_failure_leaves_off_exactly_what_someone_meant():
    assert {"shutdown", "destroyed", "saved", "migrated", "from_snapshot"} == ON_PURPOSE
    spec = DomainSpec.model_validate({"memory": "1GiB", "runStrategy": "rerunOnFailure"})
    for reason in ("crashed", "failed", "daemon", "unknown", ""):
        assert wanted_state(spec, off(reason=reason)) == "running", reason


def test_a_running_domain_is_stopped_only_by_halted():
    assert kinds(plan([running()], state="stopped")) == ["stop"]
    assert kinds(plan([running()], state="stopped", runStrategy="manual")) == []
    assert kinds(plan([running()], runStrategy="rerunOnFailure")) == []
    assert kinds(plan([running()])) == []


def test_manual_keeps_what_people_did_but_still_applies_the_definition():
    # Running by hand although git says stopped: the vCPU change is written, and waits for a restart.
    host = plan([running(vcpus=1)], vcpus=2, state="stopped", runStrategy="manual")
    assert kinds(host) == ["update"]
    assert host.actions[0].restart
    # Off by hand although git says running: the change is written to the shut-off definition.
    host = plan([off(reason="destroyed", vcpus=1)], vcpus=2, runStrategy="manual")
    assert kinds(host) == ["update"]
    assert not host.actions[0].restart
    assert [c.field for c in host.actions[0].changes] == ["vcpus"]


def test_the_first_define_follows_state_and_hides_the_default_strategy():
    started = plan([], runStrategy="manual")
    assert kinds(started) == ["define", "start"]
    assert ("runStrategy", "manual") in {(c.field, c.after) for c in started.actions[0].changes}
    assert kinds(plan([], runStrategy="halted")) == ["define"]
    assert kinds(plan([], runStrategy="manual", state="stopped")) == ["define"]
    default = plan([])
    assert "runStrategy" not in {c.field for c in default.actions[0].changes}
    assert "runStrategy" not in {c.field for c in plan([], state="stopped").actions[0].changes}


def test_changing_only_the_strategy_changes_nothing_on_the_host():
    for strategy in ("always", "rerunOnFailure", "manual"):
        assert kinds(plan([running()], runStrategy=strategy)) == [], strategy
    assert kinds(plan([off(state="stopped", reason="shutdown")], state="stopped", runStrategy="manual")) == []


def test_a_crashed_but_still_active_domain_is_not_started_twice():
    seen = observed_domain("web", OWNER, active=True)
    crashed = DomainObservation(seen.name, seen.xml, True, False, "crashed", "panicked", 3)
    assert kinds(plan([crashed], runStrategy="rerunOnFailure")) == []


# ------------------------------------------------------------------------ off on purpose, recorded


def recorded(off_on_purpose: str, reason: str, *, active: bool = False, **spec: object) -> DomainObservation:
    """A managed domain whose ownership records it was seen off on purpose (``offOnPurpose``)."""
    owner = OWNER.model_copy(update={"off_on_purpose": off_on_purpose})
    seen = observed_domain("web", owner, active=active, **spec)
    state = "running" if active else "shutoff"
    return DomainObservation(seen.name, seen.xml, active, False, state, reason, 7 if active else -1)


def test_rerun_on_failure_records_a_stop_on_purpose_in_the_ownership_without_a_change():
    for reason in sorted(ON_PURPOSE):
        host = plan([off(reason=reason)], runStrategy="rerunOnFailure")
        assert kinds(host) == [] and not Plan(hosts={"hv1": host}).has_changes
        assert {name: owner.off_on_purpose for name, owner in host.metadata_writes.items()} == {"web": reason}
        assert host.metadata_writes["web"] == OWNER.model_copy(update={"off_on_purpose": reason})
    assert plan([off(reason="shutdown")]).metadata_writes == {}  # always: nothing to remember
    assert plan([recorded("shutdown", "shutdown")], runStrategy="rerunOnFailure").metadata_writes == {}


def test_after_libvirtd_forgot_why_the_record_keeps_the_domain_off():
    # libvirtd restarted or the host rebooted: the reason reads unknown (or none at all).
    for reason in ("unknown", ""):
        assert kinds(plan([recorded("destroyed", reason)], runStrategy="rerunOnFailure")) == [], reason
        assert kinds(plan([off(reason=reason)], runStrategy="rerunOnFailure")) == ["start"], reason
    kept = plan([recorded("destroyed", "unknown")], runStrategy="rerunOnFailure")
    assert kept.metadata_writes == {}
    assert kinds(plan([recorded("destroyed", "unknown")], runStrategy="always")) == ["start"]


def test_a_failure_seen_since_or_a_run_clears_the_record():
    crashed = plan([recorded("shutdown", "crashed")], runStrategy="rerunOnFailure")
    assert kinds(crashed) == ["start"]
    assert crashed.metadata_writes["web"].off_on_purpose == ""
    back = plan([recorded("shutdown", "", active=True)], runStrategy="rerunOnFailure")
    assert kinds(back) == [] and back.metadata_writes["web"] == OWNER


def test_a_redefine_of_a_domain_off_on_purpose_carries_the_record_in_its_xml():
    host = plan([recorded("destroyed", "unknown", vcpus=1)], vcpus=2, runStrategy="rerunOnFailure")
    assert kinds(host) == ["update"] and host.metadata_writes == {}
    owner = parse_domain(host.actions[0].xml or "").owner
    assert owner is not None and owner.off_on_purpose == "destroyed"
    seen = plan([off(reason="shutdown", vcpus=1)], vcpus=2, runStrategy="rerunOnFailure")
    written = parse_domain(seen.actions[0].xml or "").owner
    assert seen.metadata_writes == {} and written is not None and written.off_on_purpose == "shutdown"


def test_the_record_survives_the_xml():
    from lxml import etree

    from reconciler.libvirtxml.ownership import owner_metadata, read_owner, write_owner

    marked = OWNER.model_copy(update={"off_on_purpose": "destroyed"})
    root = etree.fromstring(b"<domain><name>a</name></domain>")
    write_owner(root, marked)
    assert read_owner(root.find("metadata")) == marked
    assert 'offOnPurpose="destroyed"' in owner_metadata(marked)
    assert "offOnPurpose" not in owner_metadata(OWNER)
