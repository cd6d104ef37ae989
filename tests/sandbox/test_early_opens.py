"""Hosts opened while the manifests load: taken only for the very host and state they were opened
for, never for a host the command does not pick, and never stale."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt import early as early_module
from reconciler.adapters.libvirt.early import EarlyOpens, sandbox_node_xml
from reconciler.adapters.sandbox import SandboxFile
from reconciler.cli.inputs import early_opens, load
from reconciler.errors import ManifestError, PermanentHostError
from tests.helpers import cli, domain_yaml, host_yaml, write


def two_hosts(root: Path) -> None:
    write(root, "hosts.yaml", host_yaml("hv1", "state/hv1.xml") + "---\n" + host_yaml("hv2", "state/hv2.xml"))
    write(root, "web.yaml", domain_yaml("web", "hv1", vcpus=1))


def args(*hosts: str, selector: list[str] | None = None, host_parallel: int = 16) -> argparse.Namespace:
    return argparse.Namespace(host=list(hosts) or None, selector=selector, host_parallel=host_parallel)


def test_a_plan_and_an_apply_work_from_hosts_opened_early(sandbox):
    sandbox.domains(web={"vcpus": 2}, db={"vcpus": 1, "state": "stopped"})
    assert cli("plan", str(sandbox.root)).code == 2
    assert cli("apply", str(sandbox.root)).code == 0
    assert cli("plan", str(sandbox.root)).code == 0  # what the apply saved is what the next run reads
    view = sandbox.view()
    assert view["web"].active and view["web"].vcpus == 2 and not view["db"].active


def test_only_the_hosts_the_command_picks_are_opened_early(tmp_path):
    two_hosts(tmp_path)
    with early_opens(args("hv2")) as early:
        manifests = load(str(tmp_path), early=early)
        assert early.take(manifests.hosts["hv1"]) is None  # never opened: not picked
        conn, _ = early.take_sandbox(manifests.hosts["hv2"], SandboxFile(tmp_path / "state" / "hv2.xml"))
        assert conn is not None  # picked, opened, taken
        conn.close()


def test_no_more_hosts_are_opened_early_than_the_pass_opens_at_once(tmp_path):
    two_hosts(tmp_path)
    with early_opens(args(host_parallel=1)) as early:
        manifests = load(str(tmp_path), early=early)
        hv1, hv2 = manifests.hosts["hv1"], manifests.hosts["hv2"]
        conn, _ = early.take_sandbox(hv1, SandboxFile(hv1.spec.address.sandbox_path))
        assert conn is not None  # the first host in file order
        conn.close()
        assert early.take(hv2) is None  # the second waits for the pass to open it


def test_a_state_file_changed_after_the_early_load_is_loaded_again(tmp_path):
    two_hosts(tmp_path)
    assert cli("apply", str(tmp_path), "--auto-approve").code == 0
    with EarlyOpens(lambda host: True) as early:
        manifests = load(str(tmp_path), early=early)
        hv1, hv2 = manifests.hosts["hv1"], manifests.hosts["hv2"]
        state = SandboxFile(hv1.spec.address.sandbox_path, "hv1")
        conn, text = early.take_sandbox(hv1, state)
        assert conn is not None and text == sandbox_node_xml(hv1, state)  # unchanged: taken
        try:
            assert {dom.name() for dom in conn.listAllDomains()} == {"web"}
        finally:
            conn.close()
        other = SandboxFile(hv2.spec.address.sandbox_path, "hv2")
        other.write(sandbox_node_xml(hv2, other) + "<!-- another apply wrote it meanwhile -->\n")
        conn, text = early.take_sandbox(hv2, other)
        assert conn is None and text.endswith("meanwhile -->\n")  # loaded again from what is there now


def test_another_host_of_the_same_name_is_not_given_the_early_connection(tmp_path):
    two_hosts(tmp_path)
    with early_opens(args()) as early:
        manifests = load(str(tmp_path), early=early)
        moved = manifests.hosts["hv1"].model_copy(
            update={"spec": manifests.hosts["hv2"].spec}  # hv1's name, hv2's state file
        )
        assert early.take(moved) is None


def test_a_sandbox_whose_early_load_failed_is_read_again_under_its_lock(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml("hv1", "state/hv1.xml"))
    (tmp_path / "state" / "hv1.xml").mkdir(parents=True)  # a folder where the state file should be
    with early_opens(args()) as early:
        manifests = load(str(tmp_path), early=early)
        with pytest.raises(PermanentHostError, match="not a regular file"):
            early.take_sandbox(manifests.hosts["hv1"], SandboxFile(tmp_path / "state" / "hv1.xml"))
    run = cli("plan", str(tmp_path))
    assert run.code == 1 and "not a regular file" in run.out


def test_refused_manifests_close_what_was_opened_early(tmp_path, monkeypatch):
    two_hosts(tmp_path)
    write(tmp_path, "bad.yaml", domain_yaml("x", "hv1", memory="lots"))
    closed: list[libvirt.virConnect] = []

    def close_and_count(conn: libvirt.virConnect) -> None:
        closed.append(conn)
        conn.close()

    monkeypatch.setattr(early_module, "_close", close_and_count)
    early = EarlyOpens(lambda host: True)
    with pytest.raises(ManifestError, match="memory"), early:
        load(str(tmp_path), early=early)
    for thread in threading.enumerate():  # an opening still under way closes itself when it ends
        if thread.name == "vr-early-open":
            thread.join(30)
    assert len(closed) == 2 and len(set(map(id, closed))) == 2  # each host's, once
    assert cli("plan", str(tmp_path)).code == 1


def test_two_hosts_on_one_hypervisor_are_opened_once_and_refused(tmp_path):
    write(
        tmp_path, "hosts.yaml", host_yaml("hv1", "state/hv.xml") + "---\n" + host_yaml("hv2", "state/hv.xml")
    )
    started: list[str] = []
    early = EarlyOpens(lambda host: started.append(host.name) is None)
    with pytest.raises(ManifestError), early:
        load(str(tmp_path), early=early)
    assert started == ["hv1"]  # the second Host of that hypervisor is not even asked about
