"""No data loss from prune, moves, renames or an emptied branch (sandbox hosts, the real CLI)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from reconciler.adapters.gitsource import root_identity
from reconciler.adapters.sandbox import SandboxDomain, compose_node_xml, new_node_xml
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec, Owner
from tests.helpers import REPO, cli, domain_yaml, host_yaml, write


def names(sandbox, state: str = "state/hv1.xml") -> set[str]:
    text = (sandbox.root / state).read_text() if (sandbox.root / state).exists() else ""
    return {part.split("</name>", 1)[0] for part in text.split("<name>")[1:]}


def actions(result) -> list[tuple[str, str, str]]:
    return [(a["action"], a["host"], a["domain"]) for a in json.loads(result.out)["actions"]]


# ----------------------------------------------------------------------- prune sees the whole tree


def test_a_plan_of_one_file_never_undefines(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    write(sandbox.root, "vms/web.yaml", domain_yaml("web"))
    write(sandbox.root, "vms/db.yaml", domain_yaml("db"))
    assert cli("apply", str(sandbox.root)).code == 0
    planned = cli("plan", str(sandbox.root / "hosts.yaml"))
    assert planned.code == 0, planned.out
    assert "this plan loaded part of the manifest tree" in planned.out
    assert cli("apply", str(sandbox.root / "hosts.yaml")).code == 0
    assert names(sandbox) == {"web", "db"}


def test_a_plan_of_a_subfolder_never_undefines_what_the_whole_root_defined(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True, state="team-a/state/hv1.xml"))
    write(sandbox.root, "team-a/web.yaml", domain_yaml("web"))
    write(sandbox.root, "team-b/db.yaml", domain_yaml("db"))
    assert cli("apply", str(sandbox.root)).code == 0
    # The subfolder is a manifest tree of its own (with its own Host document for the same sandbox).
    (sandbox.root / "hosts.yaml").rename(sandbox.root / "hosts.yaml.off")
    write(sandbox.root, "team-a/host.yaml", host_yaml(prune=True, state="state/hv1.xml"))
    planned = cli("plan", str(sandbox.root / "team-a"), "--format", "json")
    assert planned.code == 0, planned.out + planned.err  # web is the subfolder's to change, not to own
    host = json.loads(planned.out)["hosts"]["hv1"]
    [orphan] = host["orphans"]
    assert orphan["domain"] == "db" and not orphan["delete"]
    assert "this plan loaded part of the manifest tree that defined it" in orphan["reason"]
    write(sandbox.root, "team-a/web.yaml", domain_yaml("web", vcpus=2))
    assert cli("apply", str(sandbox.root / "team-a")).code == 0
    state = (sandbox.root / "team-a" / "state" / "hv1.xml").read_text()
    assert "<name>db</name>" in state and "<vcpu" in state and ">2</vcpu>" in state
    assert state.count(f'root="{root_identity(sandbox.root)}"') == 2, "the whole root keeps both"


def test_an_emptied_tree_is_refused_as_a_mass_deletion(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(**{f"vm-{i}": {} for i in range(7)})
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains()
    before = sandbox.state.read_bytes()
    refused = cli("apply", str(sandbox.root))
    assert refused.code == 1
    assert "would undefine 7 domains, more than maxDeletions (5)" in refused.out
    assert "--allow-mass-delete" in refused.out
    assert sandbox.state.read_bytes() == before
    assert cli("apply", str(sandbox.root), "--allow-mass-delete").code == 0
    assert names(sandbox) == set()


def test_more_than_half_of_a_hosts_domains_is_a_mass_deletion(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(a={}, b={}, c={})
    cli("apply", str(sandbox.root))
    sandbox.domains(a={})
    refused = cli("plan", str(sandbox.root))
    assert refused.code == 1 and "more than half of its 3 managed domains" in refused.out
    sandbox.domains(a={}, b={})
    assert cli("apply", str(sandbox.root)).code == 0  # one of three is not a mass deletion
    assert names(sandbox) == {"a", "b"}


def test_deletion_protection_keeps_a_domain_gone_from_git(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(web={}, db={"deletionProtection": True})
    assert cli("apply", str(sandbox.root)).code == 0
    sandbox.domains(web={})
    planned = cli("plan", str(sandbox.root), "--allow-delete", "--allow-mass-delete")
    assert planned.code == 0 and "deletionProtection: true" in planned.out
    assert cli("apply", str(sandbox.root), "--allow-delete", "--allow-mass-delete").code == 0
    assert names(sandbox) == {"web", "db"}


def test_turning_deletion_protection_on_redefines_without_a_restart(sandbox):
    sandbox.domains(db={})
    cli("apply", str(sandbox.root))
    sandbox.domains(db={"deletionProtection": True})
    planned = cli("plan", str(sandbox.root), "--format", "json")
    [action] = json.loads(planned.out)["actions"]
    assert action["action"] == "update" and not action["restart"]
    assert [c["field"] for c in action["changes"]] == ["deletionProtection"]
    assert cli("apply", str(sandbox.root)).code == 0
    assert cli("plan", str(sandbox.root)).code == 0


def seed_owned(sandbox, name: str, owner: Owner, disk: str | None = None) -> None:
    """A domain defined by this manifest tree (its root recorded), with the ownership given."""
    spec = DomainSpec.model_validate({"memory": "1GiB", "disks": [{"path": disk}] if disk else []})
    owner = owner.model_copy(update={"root": root_identity(sandbox.root)})
    sandbox.seed(render_domain(name, spec, owner), running=False)


def test_a_domain_whose_ownership_names_no_root_is_never_pruned(sandbox):
    """Ownership written before roots were recorded cannot prove which tree it belongs to."""
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(web={}, db={}, app={})
    cli("apply", str(sandbox.root))
    spec = DomainSpec.model_validate({"memory": "1GiB"})
    sandbox.seed(render_domain("legacy", spec, Owner(manifest="old.yaml")), running=False)
    planned = cli("plan", str(sandbox.root))
    assert planned.code == 0 and "names no manifest root" in planned.out


def test_an_import_waiting_for_its_first_apply_is_never_pruned(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(web={})
    cli("apply", str(sandbox.root))
    seed_owned(sandbox, "adopted", Owner(manifest="imported/adopted.yaml", host="hv1", pending=True))
    planned = cli("plan", str(sandbox.root))
    assert planned.code == 0 and "adopted (imported or restored)" in planned.out
    assert cli("apply", str(sandbox.root)).code == 0 and "adopted" in names(sandbox)
    lapsed = Owner(manifest="x.yaml", host="hv1", pending=True, pending_until="2000-01-01T00:00:00+00:00")
    seed_owned(sandbox, "lapsed", lapsed)
    assert cli("apply", str(sandbox.root)).code == 0
    assert names(sandbox) == {"web", "adopted"}


def test_a_domain_of_another_host_entry_is_not_pruned_here(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(prune=True))
    sandbox.domains(web={})
    cli("apply", str(sandbox.root))
    seed_owned(sandbox, "theirs", Owner(manifest="m.yaml", host="hv9"))
    planned = cli("plan", str(sandbox.root))
    assert "defined through Host entry 'hv9', not 'hv1'" in planned.out
    assert cli("apply", str(sandbox.root)).code == 0 and "theirs" in names(sandbox)


# ------------------------------------------------------------------------- one disk, one domain


def test_a_rename_is_refused_while_the_old_domain_keeps_the_disk(sandbox):
    disk = [{"path": "/var/lib/libvirt/images/web.qcow2"}]
    sandbox.domains(web={"disks": disk})
    cli("apply", str(sandbox.root))
    sandbox.domains(**{"web-new": {"disks": disk}})
    refused = cli("apply", str(sandbox.root))
    assert refused.code == 1
    assert "is the disk of 'web', which keeps it (no longer in git, kept" in refused.out
    assert names(sandbox) == {"web"}
    renamed = cli("apply", str(sandbox.root), "--allow-delete", "--allow-mass-delete")  # old first, then new
    assert renamed.code == 0, renamed.out
    assert names(sandbox) == {"web-new"}


def test_a_disk_an_unmanaged_domain_uses_is_refused(sandbox):
    xml = render_domain(
        "theirs", DomainSpec.model_validate({"memory": "1GiB", "disks": [{"path": "/img/x.qcow2"}]}), None
    )
    sandbox.seed(xml, running=True)
    sandbox.domains(mine={"disks": [{"path": "/img/x.qcow2"}]})
    refused = cli("plan", str(sandbox.root))
    assert refused.code == 1 and "not managed by virt-reconcile" in refused.out


# ------------------------------------------------------------------------------ a move, not a copy


def two_hosts(sandbox, **hv2: object) -> None:
    write(sandbox.root, "hosts.yaml", host_yaml("hv1") + "---\n" + host_yaml("hv2", "state/hv2.xml", **hv2))


def test_a_domain_whose_host_changes_moves_and_never_runs_twice(sandbox):
    two_hosts(sandbox)
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv1", vcpus=2))
    assert cli("apply", str(sandbox.root)).code == 0
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv2", vcpus=2))
    planned = cli("plan", str(sandbox.root), "--format", "json")
    assert planned.code == 2
    assert actions(planned) == [("move", "hv1", "web"), ("move", "hv2", "web"), ("start", "hv2", "web")]
    text = cli("plan", str(sandbox.root)).out
    assert "⇄ move web" in text and "to hv2" in text and "from hv1" in text
    assert "⇄" in cli("plan", str(sandbox.root), "--format", "markdown").out
    applied = cli("apply", str(sandbox.root))
    assert applied.code == 0, applied.out
    assert applied.out.index("then undefined") < applied.out.index("defined (moved from hv1)")
    assert names(sandbox) == set() and names(sandbox, "state/hv2.xml") == {"web"}
    assert cli("plan", str(sandbox.root)).code == 0


def test_a_move_whose_target_is_refused_leaves_the_source_alone(sandbox):
    two_hosts(sandbox, cpus=1)
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv1", vcpus=8))
    cli("apply", str(sandbox.root))
    before = sandbox.state.read_bytes()
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv2", vcpus=8))
    result = cli("apply", str(sandbox.root))
    assert result.code in {1, 3}, result.out
    assert "move from hv1 to hv2 held" in result.out
    assert sandbox.state.read_bytes() == before


def test_a_domain_is_not_defined_while_its_old_host_cannot_be_observed(sandbox):
    two_hosts(sandbox)
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv1"))
    cli("apply", str(sandbox.root))
    sandbox.state.write_text("<node>not a sandbox</nod")  # hv1 cannot be read any more
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv2"))
    result = cli("apply", str(sandbox.root))
    assert result.code == 1
    assert "hv1 could not be observed (sandbox state file " in result.out
    assert "is not XML (line 1, column 25)), and web may still run there" in result.out
    assert names(sandbox, "state/hv2.xml") == set()


def test_a_move_needs_both_hosts_in_the_run(sandbox):
    two_hosts(sandbox)
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv1"))
    cli("apply", str(sandbox.root))
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv2"))
    only_target = cli("apply", str(sandbox.root), "--host", "hv2")
    assert only_target.code == 1 and "moving it needs hv1 in this run too" in only_target.out
    only_source = cli("apply", str(sandbox.root), "--host", "hv1", "--allow-delete")
    assert "in git for hv2 now" in only_source.out
    assert names(sandbox) == {"web"} and names(sandbox, "state/hv2.xml") == set()


# ---------------------------------------------------------------------- the question on a terminal


def on_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its stdin and stdout, answering its question."""
    leader, follower = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", *args], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    seen = b""
    answered = False
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Only 'yes' goes ahead" in seen:
            os.write(leader, answer + b"\n")
            answered = True
    os.close(leader)
    return process.wait(timeout=60), seen.decode(errors="replace")


def test_apply_asks_before_undefining_on_a_terminal(sandbox):
    sandbox.domains(web={}, old={})
    cli("apply", str(sandbox.root))
    sandbox.domains(web={})
    code, screen = on_terminal(["apply", str(sandbox.root), "--allow-delete"], b"no")
    assert code == 1 and "Undefine 1 and move 0 domain(s)?" in screen and "not approved" in screen
    assert names(sandbox) == {"web", "old"}
    code, screen = on_terminal(["apply", str(sandbox.root), "--allow-delete"], b"yes")
    assert code == 0 and names(sandbox) == {"web"}


def test_auto_approve_and_no_terminal_ask_nothing(sandbox):
    sandbox.domains(web={}, old={}, gone={})
    cli("apply", str(sandbox.root))
    sandbox.domains(web={}, old={})
    code, screen = on_terminal(["apply", str(sandbox.root), "--allow-delete", "--auto-approve"], b"no")
    assert code == 0 and "goes ahead" not in screen and names(sandbox) == {"web", "old"}
    sandbox.domains(web={})
    assert cli("apply", str(sandbox.root), "--allow-delete").code == 0  # no terminal: no question
    assert names(sandbox) == {"web"}


def test_a_running_domain_keeps_its_disk_until_it_restarts(sandbox):
    sandbox.domains(a={"disks": [{"path": "/img/x"}]}, b={"disks": [{"path": "/img/y"}], "state": "stopped"})
    cli("apply", str(sandbox.root))
    sandbox.domains(a={"disks": [{"path": "/img/y"}]}, b={"disks": [{"path": "/img/x"}]})  # swapped
    refused = cli("apply", str(sandbox.root))
    assert refused.code == 1, refused.out
    assert "/img/x is the disk of 'a', which keeps it (running on it until it is stopped" in refused.out


def test_a_chain_of_moves_with_a_blocked_end_moves_nothing(sandbox):
    """d1→h2, d2→h3, d3→h4 where h4 cannot take d3: every move waits, no domain is lost."""
    hosts = "---\n".join(host_yaml(f"h{i}", f"state/h{i}.xml", cpus=4, memory="4GiB") for i in range(1, 5))
    write(sandbox.root, "hosts.yaml", hosts)
    place = {"d1": "h1", "d2": "h2", "d3": "h3", "z": "h4"}
    spec = {"memory": "2GiB", "vcpus": 2}
    write(sandbox.root, "vms.yaml", "---\n".join(domain_yaml(d, host=h, **spec) for d, h in place.items()))
    assert cli("apply", str(sandbox.root)).code == 0
    place.update(d1="h2", d2="h3", d3="h4")
    write(sandbox.root, "vms.yaml", "---\n".join(domain_yaml(d, host=h, **spec) for d, h in place.items()))
    result = cli("apply", str(sandbox.root))
    assert result.code in {1, 3}, result.out
    assert [names(sandbox, f"state/h{i}.xml") for i in range(1, 5)] == [{"d1"}, {"d2"}, {"d3"}, {"z"}]


def test_a_move_onto_a_name_taken_on_the_target_undefines_nothing(sandbox):
    two_hosts(sandbox)
    write(
        sandbox.root, "hosts.yaml", host_yaml("hv1", prune=True) + "---\n" + host_yaml("hv2", "state/hv2.xml")
    )
    write(sandbox.root, "vms.yaml", domain_yaml("a", host="hv1") + "---\n" + domain_yaml("b", host="hv1"))
    cli("apply", str(sandbox.root))
    theirs = render_domain("a", DomainSpec.model_validate({"memory": "1GiB"}), None)
    other = sandbox.root / "state" / "hv2.xml"
    other.write_text(compose_node_xml(new_node_xml(16, 64 << 30), [SandboxDomain(theirs, False, False)]))
    write(sandbox.root, "vms.yaml", domain_yaml("a", host="hv2") + "---\n" + domain_yaml("b", host="hv1"))
    result = cli("apply", str(sandbox.root))
    assert result.code == 1 and "where a domain of that name exists that is not ours" in result.out
    assert names(sandbox) == {"a", "b"}


def test_a_rename_onto_another_host_with_the_same_shared_disk_is_refused(sandbox):
    two_hosts(sandbox)
    write(sandbox.root, "vms.yaml", domain_yaml("a", host="hv1", disks=[{"path": "/shared/a.qcow2"}]))
    cli("apply", str(sandbox.root))
    write(sandbox.root, "vms.yaml", domain_yaml("a-new", host="hv2", disks=[{"path": "/shared/a.qcow2"}]))
    result = cli("apply", str(sandbox.root))
    assert result.code == 1 and "is the disk of 'a' on hv1, which stays there" in result.out
    assert names(sandbox, "state/hv2.xml") == set()
