"""A run never undoes what a newer revision wrote: a managed domain whose ownership records a commit
this run's revision does not contain is held (no update, stop, start or prune), unless the run says
``--overwrite-newer``; a run without a revision holds nothing (pure: no libvirt, no git)."""

from __future__ import annotations

from reconciler.engine.fleet import plan_fleet
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.ownership import RevisionCheck, commit_of
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.reconcile import ReconcileOptions, revision_check
from reconciler.spec.models import Domain, Owner
from tests.helpers import domain_model, observed_domain

ROOT = "git:example.org/infra:manifests"
HEAD = "a" * 40  # this run's commit
OLD = "b" * 40  # an ancestor of HEAD
NEW = "c" * 40  # a newer commit (or another branch's): not contained
GiB = 1024**3


def owner(revision: str, host: str = "hv1") -> Owner:
    return Owner(manifest="m.yaml", revision=revision, spec_hash="h", root=ROOT, host=host)


def live(
    name: str, revision: str, *, host: str = "hv1", active: bool = True, **spec: object
) -> DomainObservation:
    return observed_domain(name, owner(revision, host), active=active, **spec)


def desired(
    domains: list[Domain], check: RevisionCheck | None, *, host: str = "hv1", prune: bool = True
) -> DesiredHost:
    return DesiredHost(
        host,
        f"test:///{host}",
        {d.name: d for d in domains},
        lambda _name: owner(HEAD, host),
        DeletionRules(allow=prune, allow_mass=True, root=ROOT),
        revisions=check,
    )


def check(run: str = HEAD) -> RevisionCheck:
    return RevisionCheck(run, frozenset({OLD}))


def plan(want: DesiredHost, observed: list[DomainObservation]) -> HostPlan:
    return build_host_plan(want, HostObservation(cpus=8, memory=16 * GiB, domains=tuple(observed)))


def kinds(host: HostPlan) -> list[tuple[str, str]]:
    return [(a.kind.value, a.domain) for a in host.actions]


def test_an_update_written_by_a_newer_revision_is_held_with_the_reason():
    host = plan(desired([domain_model("web", vcpus=4)], check()), [live("web", NEW, vcpus=2)])
    assert kinds(host) == []
    [held] = host.held
    assert (held.domain, held.revision) == ("web", NEW)
    assert held.reason == (
        f"written by revision {NEW[:12]}, which this run's revision {HEAD[:12]} does not contain "
        "(a newer commit, or another branch): pull it first, or apply --overwrite-newer"
    )
    assert not host.blocked  # its neighbours are still applied
    assert Plan(hosts={"hv1": host}).has_errors  # but the run exits 1


def test_a_newer_domain_this_run_would_leave_as_it_is_holds_nothing():
    """An old checkout whose manifest already says what the newer commit wrote undoes nothing there:
    the domain is not held (its run does not exit 1 for it)."""
    host = plan(desired([domain_model("web", vcpus=2)], check()), [live("web", NEW, vcpus=2)])
    assert (kinds(host), host.held) == ([], ())
    assert not Plan(hosts={"hv1": host}).has_errors


def test_a_stop_and_a_start_of_a_newer_domain_are_held():
    stopped = domain_model("web", state="stopped")
    assert kinds(plan(desired([stopped], check()), [live("web", NEW)])) == []
    assert kinds(plan(desired([domain_model("db")], check()), [live("db", NEW, active=False)])) == []
    # The same domains written by this run's own commit, or an ancestor of it, are changed.
    assert kinds(plan(desired([stopped], check()), [live("web", HEAD)])) == [("stop", "web")]
    assert kinds(plan(desired([domain_model("db")], check()), [live("db", OLD, active=False)])) == [
        ("start", "db")
    ]


def test_a_domain_a_newer_revision_added_is_never_pruned():
    host = plan(desired([], check()), [live("new", NEW)])
    assert kinds(host) == [] and host.orphans == ()
    assert [h.domain for h in host.held] == ["new"]
    # Written by an ancestor, the same orphan goes (prune is on).
    assert kinds(plan(desired([], check()), [live("gone", OLD)])) == [("undefine", "gone")]


def test_an_orphan_a_newer_revision_added_that_this_run_keeps_holds_nothing():
    """Prune off: the run keeps the orphan anyway (undoes nothing), so it is an orphan, not held,
    and the run does not exit 1 for it."""
    host = plan(desired([], check(), prune=False), [live("new", NEW)])
    assert (kinds(host), host.held, [o.domain for o in host.orphans]) == ([], (), ["new"])
    assert not Plan(hosts={"hv1": host}).has_errors


def test_the_neighbours_of_a_held_domain_are_still_planned():
    want = desired([domain_model("web", vcpus=4), domain_model("db", vcpus=4)], check())
    host = plan(want, [live("web", NEW, vcpus=2, active=False), live("db", HEAD, vcpus=2, active=False)])
    assert kinds(host) == [("update", "db"), ("start", "db")]
    assert [h.domain for h in host.held] == ["web"]


def test_dirty_revisions_compare_their_commit_and_unrecorded_ones_never_hold():
    web = domain_model("web", vcpus=4)
    assert kinds(plan(desired([web], check()), [live("web", OLD + "+dirty", vcpus=2)])) == [("update", "web")]
    assert plan(desired([web], check()), [live("web", NEW + "+dirty", vcpus=2)]).held[0].revision == NEW
    dirty_run = plan(desired([web], check(HEAD + "+dirty")), [live("web", HEAD, vcpus=2)])
    assert kinds(dirty_run) == [("update", "web")]
    assert (
        f"this run's revision {HEAD[:12]}+dirty does not"
        in plan(desired([web], check(HEAD + "+dirty")), [live("web", NEW, vcpus=2)]).held[0].reason
    )
    for recorded in ("", "dir:0123456789ab"):  # no git commit recorded: nothing to compare
        assert kinds(plan(desired([web], check()), [live("web", recorded, vcpus=2)])) == [("update", "web")]


def test_without_a_check_nothing_is_held():
    host = plan(desired([domain_model("web", vcpus=4)], None), [live("web", NEW, vcpus=2), live("new", NEW)])
    assert kinds(host) == [("undefine", "new"), ("update", "web")] and host.held == ()


def test_a_move_whose_source_a_newer_revision_wrote_is_held_on_both_hosts():
    # The newer revision put web on hv2; this stale run still wants it on hv1.
    want = {"hv1": desired([domain_model("web")], check()), "hv2": desired([], check(), host="hv2")}
    observed = {
        "hv1": HostObservation(cpus=8, memory=16 * GiB, domains=()),
        "hv2": HostObservation(cpus=8, memory=16 * GiB, domains=(live("web", NEW, host="hv2"),)),
    }
    plans = plan_fleet(want, observed, {}, ["hv1", "hv2"])
    assert kinds(plans["hv1"]) == [] and kinds(plans["hv2"]) == []
    assert [h.domain for h in plans["hv1"].held] == ["web"] and "held on hv2" in plans["hv1"].held[0].reason
    assert [h.revision for h in plans["hv2"].held] == [NEW]
    # The same domain written by an ancestor moves.
    observed["hv2"] = HostObservation(cpus=8, memory=16 * GiB, domains=(live("web", OLD, host="hv2"),))
    moved = plan_fleet(want, observed, {}, ["hv1", "hv2"])
    assert [a.kind.value for a in moved["hv2"].actions] == ["move"]


class Asked:
    """A contained_revisions answer that records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []

    def __call__(self, commits: frozenset[str]) -> frozenset[str]:
        self.calls.append(commits)
        return commits & {OLD}


def observed(*revisions: str) -> dict[str, HostObservation]:
    domains = tuple(live(f"d{n}", revision) for n, revision in enumerate(revisions))
    return {"hv1": HostObservation(cpus=8, memory=16 * GiB, domains=domains)}


def test_git_is_asked_once_per_pass_and_only_for_revisions_other_than_the_runs():
    asked = Asked()
    options = ReconcileOptions(revision=HEAD, contained_revisions=asked)
    made = revision_check(options, observed(HEAD, HEAD + "+dirty", ""))
    assert made is not None and not made.newer(HEAD) and asked.calls == []  # right after an apply
    made = revision_check(options, observed(HEAD, OLD, NEW, OLD + "+dirty", NEW))
    assert asked.calls == [frozenset({OLD, NEW})]
    assert made is not None and made.newer(NEW) and not made.newer(OLD) and not made.newer(OLD + "+dirty")


def test_no_check_without_a_git_revision_a_way_to_ask_or_with_overwrite_newer():
    asked = Asked()
    seen = observed(NEW)
    assert revision_check(ReconcileOptions(revision="", contained_revisions=asked), seen) is None
    assert (
        revision_check(ReconcileOptions(revision="dir:0123456789ab", contained_revisions=asked), seen) is None
    )
    assert revision_check(ReconcileOptions(revision=HEAD), seen) is None
    overwrite = ReconcileOptions(revision=HEAD, contained_revisions=asked, overwrite_newer=True)
    assert revision_check(overwrite, seen) is None
    assert asked.calls == []
    assert commit_of(NEW + "+dirty") == NEW and commit_of("dir:0123456789ab") == ""
