"""The suspend annotation on a Domain or a Host: no action of any kind, reported in every plan format,
still counted by the policy; annotations validated with file, line and field (pure: no libvirt)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from reconciler.engine.fleet import plan_fleet
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.policy import HostPolicy
from reconciler.engine.pruning import DeletionRules
from reconciler.errors import ManifestError
from reconciler.report import Printer, render_json, render_markdown, render_text
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import Capacity, Domain, Overcommit, Owner
from tests.helpers import domain_model, host_yaml, observed_domain, write

OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h", host="hv1")
GiB = 1024**3
SUSPEND = {"virt-reconcile.dev/suspend": "true"}


def domain(name: str, annotations: dict[str, str] | None = None, **spec: object) -> Domain:
    model = domain_model(name, **spec)
    if annotations:
        metadata = model.metadata.model_copy(update={"annotations": annotations})
        model = model.model_copy(update={"metadata": metadata})
    return model


def live(name: str, *, active: bool = True, **spec: object) -> DomainObservation:
    return observed_domain(name, OWNER, active=active, **spec)


def desired(
    domains: list[Domain], *, host_suspended: bool = False, prune: bool = True, cpus: int | None = None
) -> DesiredHost:
    return DesiredHost(
        "hv1",
        "test:///",
        {d.name: d for d in domains},
        lambda _name: OWNER,
        DeletionRules(allow=prune, allow_mass=True),
        HostPolicy(Capacity(cpus=cpus), Overcommit()),
        suspended=frozenset(d.name for d in domains if d.suspended),
        host_suspended=host_suspended,
    )


def plan(want: DesiredHost, observed: list[DomainObservation]) -> HostPlan:
    return build_host_plan(want, HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed)))


def kinds(host: HostPlan) -> list[tuple[str, str]]:
    return [(a.kind.value, a.domain) for a in host.actions]


# ------------------------------------------------------------------------------------- plans


def test_a_suspended_domain_gets_no_action_while_its_neighbours_do():
    want = desired([domain("web", SUSPEND, vcpus=4), domain("db", vcpus=4)])
    host = plan(want, [live("web", vcpus=2, active=False), live("db", vcpus=2, active=False)])
    assert kinds(host) == [("update", "db"), ("start", "db")]
    assert host.suspended == ("web",)
    assert not host.blocked and not host.host_suspended


def test_a_suspended_domain_is_not_defined_and_its_drift_is_not_corrected():
    assert kinds(plan(desired([domain("web", SUSPEND)]), [])) == []
    assert plan(desired([domain("web", SUSPEND)]), []).suspended == ("web",)
    assert kinds(plan(desired([domain("web", SUSPEND)]), [live("web", active=False)])) == []


def test_a_suspended_host_does_nothing_and_lists_every_domain():
    want = desired([domain("web", vcpus=4), domain("new")], host_suspended=True)
    host = plan(want, [live("web", vcpus=2, active=False), live("gone")])  # "gone" would be pruned
    assert kinds(host) == []
    assert host.orphans == ()
    assert host.suspended == ("gone", "new", "web")
    assert host.host_suspended and host.blocked
    assert host.paused_because == 'the host is suspended (virt-reconcile.dev/suspend: "true")'


def test_suspended_domains_still_count_in_the_policy():
    # 8 CPUs x 4 = 32 vCPUs: three suspended domains hold 24, leaving room for 8 more, not 9.
    suspended = [domain(f"web{n}", SUSPEND, vcpus=8) for n in range(3)]
    seen = [live(f"web{n}", vcpus=8) for n in range(3)]
    fits = plan(desired([*suspended, domain("db", vcpus=8)]), seen)
    assert kinds(fits) == [("define", "db"), ("start", "db")] and not fits.refused
    too_big = plan(desired([*suspended, domain("db", vcpus=8), domain("db2", vcpus=1)]), seen)
    assert too_big.refused
    assert [rule.rule for rule in too_big.policy.violations] == ["cpu.total"]  # type: ignore[union-attr]


def test_a_suspended_domain_is_never_moved_off_or_onto_a_host():
    # web's manifest moved it from hv1 to hv2, suspended: neither host acts on it.
    hv2_owner = OWNER.model_copy(update={"host": "hv2"})
    want = {
        "hv1": desired([]),
        "hv2": DesiredHost(
            "hv2",
            "test:///2",
            {"web": domain("web", SUSPEND)},
            lambda _n: hv2_owner,
            suspended=frozenset({"web"}),
        ),
    }
    want["hv1"] = DesiredHost(
        "hv1", "test:///", {}, lambda _n: OWNER, DeletionRules(allow=True), suspended=frozenset({"web"})
    )
    observed = {
        "hv1": HostObservation(cpus=8, memory=16 * GiB, domains=(live("web"),)),
        "hv2": HostObservation(cpus=8, memory=16 * GiB, domains=()),
    }
    plans = plan_fleet(want, observed, {}, ["hv1", "hv2"])
    assert plans["hv1"].actions == () and plans["hv2"].actions == ()
    assert plans["hv1"].suspended == ("web",) and plans["hv2"].suspended == ("web",)


def test_a_move_off_a_suspended_host_is_held():
    hv2_owner = OWNER.model_copy(update={"host": "hv2"})
    want = {
        "hv1": DesiredHost("hv1", "test:///", {}, lambda _n: OWNER, host_suspended=True),
        "hv2": DesiredHost("hv2", "test:///2", {"web": domain("web")}, lambda _n: hv2_owner),
    }
    observed = {
        "hv1": HostObservation(cpus=8, memory=16 * GiB, domains=(live("web"),)),
        "hv2": HostObservation(cpus=8, memory=16 * GiB, domains=()),
    }
    plans = plan_fleet(want, observed, {}, ["hv1", "hv2"])
    assert plans["hv1"].actions == () and plans["hv2"].actions == ()
    [held] = plans["hv2"].held
    assert held.domain == "web" and "the host is suspended" in held.reason


# ----------------------------------------------------------------------------------- reports


def test_every_plan_format_shows_suspended_domains_and_hosts():
    one = plan(desired([domain("web", SUSPEND), domain("db")]), [live("web"), live("db")])
    whole = Plan(revision="r1", hosts={"hv1": one})
    text = io.StringIO()
    render_text(whole, Printer(text, color=False))
    assert "⏸ suspended web: left alone" in text.getvalue()
    assert "1 domain(s) suspended" in text.getvalue()
    document = json.loads(render_json(whole))
    assert document["hosts"]["hv1"]["suspendedDomains"] == ["web"]
    assert document["hosts"]["hv1"]["suspended"] is False
    assert document["summary"]["suspended"] == 1
    assert "⏸ **Suspended** `web`: left alone" in render_markdown(whole)

    host = plan(desired([domain("db")], host_suspended=True), [live("db")])
    whole = Plan(revision="r1", hosts={"hv1": host})
    text = io.StringIO()
    render_text(whole, Printer(text, color=False))
    assert 'the host is suspended (virt-reconcile.dev/suspend: "true"); its 1 domain(s)' in text.getvalue()
    assert "nothing will be applied" not in text.getvalue()  # not an error: on purpose
    assert json.loads(render_json(whole))["hosts"]["hv1"]["suspended"] is True
    assert "**Suspended**" in render_markdown(whole)


# -------------------------------------------------------------------------------- annotations


def manifests_with(tmp_path: Path, host_annotations: str, domain_annotations: str) -> Path:
    write(
        tmp_path,
        "hosts.yaml",
        host_yaml().replace(
            "metadata: {name: hv1}", "metadata:\n  name: hv1\n  annotations:" + host_annotations
        ),
    )
    write(
        tmp_path,
        "web.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata:\n  name: web\n  annotations:"
        + domain_annotations
        + "\nspec: {memory: 1GiB}\n",
    )
    return tmp_path


def test_annotations_are_read_from_hosts_and_domains(tmp_path: Path):
    root = manifests_with(
        tmp_path,
        ' {virt-reconcile.dev/suspend: "true", note: "ask #ops"}',
        ' {virt-reconcile.dev/suspend: "false"}',
    )
    loaded = load_manifests(root)
    assert loaded.hosts["hv1"].suspended
    assert not loaded.domains["hv1"]["web"].suspended
    assert loaded.hosts["hv1"].metadata.annotations["note"] == "ask #ops"


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        (
            " {virt-reconcile.dev/suspend: true}",
            "web.yaml:5: metadata.annotations.virt-reconcile.dev/suspend: expected a string, but YAML "
            "read True",
        ),
        (
            ' {virt-reconcile.dev/suspend: "yes"}',
            "web.yaml:5: metadata.annotations: annotation 'virt-reconcile.dev/suspend' must be "
            '"true" or "false"',
        ),
        (
            ' {virt-reconcile.dev/suspended: "true"}',
            "web.yaml:5: metadata.annotations: unknown annotation 'virt-reconcile.dev/suspended'; "
            "did you mean virt-reconcile.dev/suspend?",
        ),
        (' {"bad key": x}', "web.yaml:5: metadata.annotations: annotation key 'bad key' is not a name"),
        (" {note: " + "x" * 5000 + "}", "has a value of 5000 characters; at most 4096"),
    ],
)
def test_a_bad_annotation_names_file_line_and_field(tmp_path: Path, annotations: str, message: str):
    with pytest.raises(ManifestError) as info:
        load_manifests(manifests_with(tmp_path, " {}", annotations))
    problems = [str(problem) for problem in info.value.problems]
    assert any(message in problem for problem in problems), problems
