"""Where the storage rules get their space: pools that share a filesystem share its limit, a dir pool
that does not run yet is judged on its folder's filesystem, and the apply judges such a pool again
once it runs (pure engine, plus the adapter's filesystem and password-file facts on this machine)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from reconciler.adapters.libvirt.environment import filesystem_id, folder_space, secret_fact
from reconciler.engine.hypervisor import (
    HostEnvironment,
    HostObservation,
    PoolObservation,
    SecretFact,
    SpaceFact,
)
from reconciler.engine.plan import build_host_plan
from reconciler.engine.policy import PolicyReport, estimated_pools, recheck_storage, storage_rules
from reconciler.engine.preflight import preflight
from reconciler.report.text import policy_line
from reconciler.spec.models import Owner
from tests.helpers import domain_model
from tests.unit.test_storage_policy import GiB, create, desired, pool


def shared(name: str, used: int = 10, volumes=()) -> PoolObservation:
    """A dir pool on the one 100 GiB filesystem ``dev 7``."""
    return PoolObservation(**{**pool(name, 100, used, volumes).__dict__, "filesystem": "dev 7"})


def test_two_pools_on_one_filesystem_share_its_free_space_and_its_commit():
    observed = [shared("images"), shared("base", volumes=(30,))]
    actions = [create("a", 60, allocation=50), create("b", 60, allocation=50, pool_name="base")]
    found, _ = storage_rules(observed, {"images": 1.0, "base": 1.0}, actions)
    by_rule = {rule.rule: rule for rule in found}
    free = by_rule["storage.free[images]"]
    assert (free.before, free.after, free.limit) == (10 * GiB, 110 * GiB, 100 * GiB) and free.raised
    assert free.arithmetic == "10GiB in use + 90GiB free on the filesystem pools base, images share = 100GiB"
    commit = by_rule["storage.commit[base]"]
    assert (commit.before, commit.after) == (30 * GiB, 150 * GiB) and commit.raised
    assert "capacity of the filesystem pools base, images share × 1" in commit.arithmetic


def test_pools_on_filesystems_not_known_to_be_one_are_judged_alone():
    observed = [pool("images"), pool("base")]  # a remote host: no filesystem known
    actions = [create("a", 60, allocation=50), create("b", 60, allocation=50, pool_name="base")]
    found, _ = storage_rules(observed, {"images": 1.0, "base": 1.0}, actions)
    assert not [rule for rule in found if rule.raised]


def test_a_dir_pool_that_does_not_run_yet_is_judged_on_its_folders_filesystem():
    host = desired({"images": 1.0, "scratch": 1.0})
    space = {"/srv/images": SpaceFact(100 * GiB, 30 * GiB, "dev 7")}
    estimates = estimated_pools(host.pools, (), space)
    assert list(estimates) == ["images"]  # scratch's filesystem is not known: unchecked
    assert host.policy is not None
    report = host.policy.judge(
        HostObservation(4, 16 * GiB, ()), {}, [create("web", 50, allocation=40)], estimates
    )
    by_rule = {rule.rule: rule for rule in report.rules}
    free = by_rule["storage.free[images]"]
    assert (free.before, free.after, free.limit) == (70 * GiB, 110 * GiB, 100 * GiB) and report.refused
    assert "the filesystem holding /srv/images (estimated: the pool does not run yet)" in free.arithmetic
    assert [note.split(":")[0] for note in report.unchecked] == [
        "storage.commit[scratch], storage.free[scratch]"
    ]
    assert report.pending_pools == {"images": 1.0, "scratch": 1.0}  # both judged again once they run


def test_a_plan_judges_a_new_pool_on_the_filesystem_its_environment_measured():
    host = desired({"images": 1.0})
    web = domain_model("web", disks=[{"volume": {"pool": "images", "name": "web.qcow2", "size": "500GiB"}}])
    owner = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
    host = replace(host, domains={"web": web}, owner_of=lambda _name: owner)
    space = {"/srv/images": SpaceFact(100 * GiB, 90 * GiB)}
    plan = build_host_plan(
        host, HostObservation(4, 16 * GiB, ()), environment=lambda _d: HostEnvironment(space=space)
    )
    assert plan.refused
    assert plan.policy is not None and plan.policy.violations[0].rule == "storage.commit[images]"


def test_the_apply_recheck_refuses_only_under_enforce_and_only_pending_pools():
    host = desired({"images": 1.0})
    assert host.policy is not None
    report = host.policy.judge(HostObservation(4, 16 * GiB, ()), {}, [])
    now = [pool("images", 100, 10, volumes=(90,))]  # files were in the folder already
    [broken] = recheck_storage(report, now, [create("web", 20)])
    assert broken.rule == "storage.commit[images]" and broken.after == 110 * GiB
    assert recheck_storage(report, now, [create("web", 10)]) == ()
    warn = desired({"images": 1.0}, enforcement="warn").policy
    assert warn is not None
    assert (
        recheck_storage(warn.judge(HostObservation(4, 16 * GiB, ()), {}, []), now, [create("web", 20)]) == ()
    )
    running = host.policy.judge(HostObservation(4, 16 * GiB, (), pools=tuple(now)), {}, [])
    assert running.pending_pools == {} and recheck_storage(running, now, [create("web", 20)]) == ()


# ------------------------------------------------------------------------- the adapter's facts


def test_a_folder_not_made_yet_is_measured_on_its_nearest_existing_parent(tmp_path: Path):
    figures = os.statvfs(tmp_path)
    space = folder_space(str(tmp_path / "pool" / "not" / "yet"))
    assert space is not None
    assert space.capacity == figures.f_frsize * figures.f_blocks
    assert space.filesystem == filesystem_id(str(tmp_path)) == f"dev {os.stat(tmp_path).st_dev}"


def test_a_password_file_fact_says_its_length_or_why_it_cannot_be_used(tmp_path: Path):
    good, folder = tmp_path / "vnc", tmp_path / "dir"
    good.write_text("12345678\n")
    folder.mkdir()
    assert secret_fact(str(good)).length == 8 and not secret_fact(str(good)).problem
    assert secret_fact(str(folder)).problem == "not a regular file"
    assert secret_fact(str(tmp_path / "gone")).problem.startswith("cannot be read on this machine")


def test_the_preflight_holds_a_vnc_password_to_eight_characters():
    web = domain_model("web", graphics={"type": "vnc", "passwordFile": "/etc/vr/web.vnc"})
    spice = domain_model("web", graphics={"type": "spice", "passwordFile": "/etc/vr/web.vnc"})
    long = HostEnvironment(secrets={"/etc/vr/web.vnc": SecretFact(9)})
    assert preflight({"web": web}, long).errors == (
        "web: spec.graphics.passwordFile: /etc/vr/web.vnc: the password is 9 characters, longer than the 8 "
        "a vnc password can be",
    )
    assert preflight({"web": spice}, long).ok
    unasked = preflight({"web": web}, HostEnvironment())
    assert unasked.ok and unasked.unchecked == (
        "/etc/vr/web.vnc: not checked: a password file is read where definitions are sent",
    )


def test_the_policy_line_says_storage_free_counts_what_is_in_use():
    found, _ = storage_rules([pool("images", 252, 23)], {"images": 1.0}, [])
    line = policy_line(PolicyReport("enforce", tuple(found))).replace("\\[", "[")  # rich markup escapes
    assert "storage.free[images] 23GiB in use/252GiB" in line and "storage.commit[images] 0B/252GiB" in line
