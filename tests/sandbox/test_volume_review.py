"""Volumes the CLI must never lose without saying so, on sandbox hosts: a move refused while the new
host lacks the domain's volume, and the question on a terminal listing the volumes an apply deletes."""

from __future__ import annotations

import libvirt
import yaml

from tests.helpers import cli, domain_yaml, host_yaml, write
from tests.sandbox.test_safety import on_terminal


def images_pool(host: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Pool",
            "metadata": {"name": "images", "host": host},
            "spec": {"type": "dir", "path": f"/var/lib/libvirt/{host}"},
        }
    )


def held(sandbox, state: str) -> tuple[set[str], set[str]]:
    """The domains and the ``images`` pool's volumes of a sandbox host (none when it has no state)."""
    if not (sandbox.root / state).exists():
        return set(), set()
    conn = libvirt.open(f"test://{sandbox.root / state}")
    try:
        pools = {p.name(): p for p in conn.listAllStoragePools()}
        found = {v.name() for v in pools["images"].listAllVolumes()} if "images" in pools else set()
        return {d.name() for d in conn.listAllDomains()}, found
    finally:
        conn.close()


ROOT_DISK = [{"volume": {"pool": "images", "name": "web-root", "size": "4GiB"}, "deleteVolumes": True}]


def test_a_move_to_a_host_without_the_domains_volume_applies_nothing_on_either_host(sandbox):
    hosts = host_yaml("hv1", prune=True) + "---\n" + host_yaml("hv2", "state/hv2.xml", prune=True)
    write(sandbox.root, "hosts.yaml", f"{hosts}---\n{images_pool('hv1')}---\n{images_pool('hv2')}")
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv1", disks=ROOT_DISK))
    assert cli("apply", str(sandbox.root)).code == 0
    before = sandbox.state.read_bytes()
    write(sandbox.root, "vms.yaml", domain_yaml("web", host="hv2", disks=ROOT_DISK))
    result = cli("apply", str(sandbox.root))
    assert result.code == 1, result.out
    assert "images/web-root is not in pool 'images' on hv2: the move from hv1 would start" in result.out
    assert sandbox.state.read_bytes() == before  # web still runs on hv1, on its volume
    domains, volumes = held(sandbox, "state/hv2.xml")
    assert domains == set() and volumes == set()


def test_the_question_lists_the_volumes_deleted_with_a_pruned_domain(sandbox):
    write(sandbox.root, "hosts.yaml", f"{host_yaml('hv1', prune=True)}---\n{images_pool('hv1')}")
    write(sandbox.root, "vms.yaml", domain_yaml("web") + "---\n" + domain_yaml("old", disks=ROOT_DISK))
    assert cli("apply", str(sandbox.root)).code == 0
    write(sandbox.root, "vms.yaml", domain_yaml("web"))
    code, screen = on_terminal(["apply", str(sandbox.root)], b"no")
    assert code == 1 and "not approved" in screen
    assert "delete-volume images/web-root (hv1, with old)" in screen
    assert "Undefine 1 and move 0 domain(s) and delete 1 volume(s)?" in screen
    assert held(sandbox, "state/hv1.xml") == ({"web", "old"}, {"web-root"})
