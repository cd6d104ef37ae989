"""The storage rules of a pool the plan makes, judged again during the apply once the pool runs, on
sandbox hosts (libvirt's test driver gives every new pool 100 GiB): the first apply that makes the
pool and its volumes is held to storage.commit like any later one."""

from __future__ import annotations

from reconciler.adapters.libvirt.host import connect
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, host_yaml, write
from tests.sandbox.test_pools import INACTIVE_IMAGES, pool_yaml, seed

GiB = 1024**3


def domain_yaml(name: str, size: str) -> str:
    return f"""\
apiVersion: virt-reconcile/v1
kind: Domain
metadata: {{name: {name}}}
spec:
  memory: 1GiB
  state: stopped
  disks:
    - volume: {{pool: images, name: {name}.qcow2, size: {size}}}
"""


def observed(root):
    manifests = load_manifests(root)
    with connect(manifests.hosts["hv1"], write=False) as host:
        seen = host.observe()
    return {pool.name: pool for pool in seen.pools}, {domain.name for domain in seen.domains}


def test_a_new_pools_volumes_over_its_commit_limit_are_refused_once_it_runs(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml())
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    write(tmp_path, "web.yaml", domain_yaml("web", "150GiB"))
    planned = cli("plan", str(tmp_path))
    assert planned.code == 2, planned.out + planned.err
    assert "judged during the apply, once it runs and before any volume is made" in planned.out
    applied = cli("apply", str(tmp_path))
    assert applied.code == 3, applied.out + applied.err
    assert "start): defined, started, autostart on" in applied.out
    assert (
        "+ create-volume web: failed: refused by policy once the pools ran: storage.commit[images]: "
        "0B → 150GiB > 100GiB pool capacity × 1 = 100GiB (adding most: web +150GiB)" in applied.out
    )
    assert "+ define web: failed: refused by policy once the pools ran" in applied.out
    pools, domains = observed(tmp_path)
    assert pools["images"].active and pools["images"].volumes == ()
    assert "web" not in domains

    write(tmp_path, "web.yaml", domain_yaml("web", "90GiB"))
    fits = cli("apply", str(tmp_path))
    assert fits.code == 0, fits.out + fits.err
    pools, domains = observed(tmp_path)
    assert [v.capacity for v in pools["images"].volumes] == [90 * GiB] and "web" in domains


def test_under_warn_the_first_apply_goes_on(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml() + "  overcommit: {enforcement: warn}\n")
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    write(tmp_path, "web.yaml", domain_yaml("web", "150GiB"))
    applied = cli("apply", str(tmp_path))
    assert applied.code == 0, applied.out + applied.err
    pools, domains = observed(tmp_path)
    assert [v.capacity for v in pools["images"].volumes] == [150 * GiB] and "web" in domains


def test_an_inactive_pools_volumes_count_once_it_is_started(tmp_path):
    seed(tmp_path, INACTIVE_IMAGES)
    write(tmp_path, "hosts.yaml", host_yaml())
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    write(tmp_path, "web.yaml", domain_yaml("web", "80GiB"))  # fits an empty pool; not beside old.qcow2
    planned = cli("plan", str(tmp_path))
    assert planned.code == 2 and "the pool is not running" in planned.out, planned.out + planned.err
    applied = cli("apply", str(tmp_path))
    assert applied.code == 3, applied.out + applied.err
    assert "storage.commit[images]: 30GiB → 110GiB > 100GiB pool capacity × 1 = 100GiB" in applied.out
    pools, domains = observed(tmp_path)
    assert pools["images"].active and [v.name for v in pools["images"].volumes] == ["old.qcow2"]
    assert "web" not in domains


def volume_domain_yaml(name: str, pool: str, size: str, delete_volumes: bool = False) -> str:
    disk = f"{{pool: {pool}, name: {name}.qcow2, size: {size}}}"
    return domain_yaml(name, size).replace(
        f"    - volume: {{pool: images, name: {name}.qcow2, size: {size}}}",
        f"    - volume: {disk}" + ("\n      deleteVolumes: true" if delete_volumes else ""),
    )


def test_a_host_refused_once_its_new_pools_run_changed_nothing_but_those_pools(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml(prune=True))
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    write(tmp_path, "kept.yaml", volume_domain_yaml("kept", "images", "10GiB"))
    write(tmp_path, "old.yaml", volume_domain_yaml("old", "images", "10GiB", delete_volumes=True))
    first = cli("apply", str(tmp_path))
    assert first.code == 0, first.out + first.err

    (tmp_path / "old.yaml").unlink()  # pruned, its volume deleted: both wait for the pool's verdict
    write(tmp_path, "more.yaml", pool_yaml("scratch", type="dir", path="/srv/scratch"))
    write(tmp_path, "web.yaml", volume_domain_yaml("web", "scratch", "150GiB"))
    applied = cli("apply", str(tmp_path))
    assert applied.code == 3, applied.out + applied.err
    assert (
        "- undefine old  (managed but no longer in git): failed: refused by policy once the pools ran: "
        "storage.commit[scratch]: 0B → 150GiB > 100GiB" in applied.out
    )
    assert "Refused by the overcommit policy on hv1" in applied.out
    pools, domains = observed(tmp_path)
    assert pools["scratch"].active and pools["scratch"].volumes == ()  # the pool it had to make
    assert domains == {"kept", "old"}  # nothing else changed: old is neither undefined
    assert sorted(v.name for v in pools["images"].volumes) == ["kept.qcow2", "old.qcow2"]  # nor deleted
