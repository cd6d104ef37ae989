"""Seed volumes on the sandbox, through the CLI: a seed never lands on another domain's disk (the
reproduced x11/x12 loss), and a seed no longer wanted does not stay behind: the one a move leaves
on the old host, and the one a domain's removed ``cloudInit`` detaches (through a saved plan too)."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt

from reconciler.adapters.libvirt.host import connect
from reconciler.engine.actions import VolumeChange
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, domain_yaml, host_yaml, write

USER_DATA = "#cloud-config\nhostname: web\n"


def pool_yaml(host: str) -> str:
    return (
        "apiVersion: virt-reconcile/v1\nkind: Pool\n"
        f"metadata: {{name: images, host: {host}}}\n"
        f"spec: {{type: dir, path: /var/lib/sandbox-{host}}}\n"
    )


def hosts(root: Path, *names: str, prune: bool = False) -> None:
    docs = [host_yaml(name, f"state/{name}.xml", prune=prune) + "---\n" + pool_yaml(name) for name in names]
    write(root, "hosts.yaml", "---\n".join(docs))


def disk(name: str) -> dict:
    return {"volume": {"pool": "images", "name": name, "size": "1GiB"}}


def volumes(root: Path, host: str = "hv1") -> set[str]:
    state = root / "state" / f"{host}.xml"
    if not state.exists():
        return set()  # never applied to
    conn = libvirt.open(f"test://{state}")
    try:
        return {vol.name() for vol in conn.storagePoolLookupByName("images").listAllVolumes()}
    finally:
        conn.close()


def planned(root: Path, *extra: str) -> list[tuple[str, str, str, str]]:
    result = cli("plan", str(root), "--format", "json", *extra)
    return [
        (a["action"], a["host"], a["domain"], (a["volume"] or {}).get("name", ""))
        for a in json.loads(result.out)["actions"]
    ]


def test_the_seed_of_x12_never_overwrites_x11s_disk_of_its_name(tmp_path):
    root = tmp_path
    hosts(root, "hv1", prune=True)
    write(root, "cloud/x12.yaml", USER_DATA)
    x11 = domain_yaml("x11", disks=[disk("x12-cidata.iso")])
    x12 = domain_yaml("x12", disks=[disk("x12-root")])
    write(root, "vms.yaml", x11 + "---\n" + x12)
    assert cli("apply", str(root)).code == 0
    seeded = domain_yaml("x12", disks=[disk("x12-root")], cloudInit={"userData": {"file": "cloud/x12.yaml"}})

    write(root, "vms.yaml", x11 + "---\n" + seeded)
    clash = cli("plan", str(root))
    assert clash.code == 1
    assert (
        "vms.yaml:" in clash.err
        and "spec.disks[0].volume.name: volume images/x12-cidata.iso is the " in clash.err
    )

    write(root, "vms.yaml", seeded)  # x11 pruned in the same plan: its disk is still its disk
    refused = cli("apply", str(root), "--allow-mass-delete")
    assert refused.code == 1, refused.out + refused.err
    assert "volume images/x12-cidata.iso is a disk of domain 'x11'" in refused.out
    assert "nothing will be applied on hv1" in refused.out
    assert volumes(root) == {"x12-root", "x12-cidata.iso"}


def test_a_moved_domain_leaves_no_seed_on_its_old_host(tmp_path):
    root = tmp_path
    hosts(root, "hv1", "hv2")
    write(root, "cloud/web.yaml", USER_DATA)
    spec = {"disks": [disk("web-root")], "cloudInit": {"userData": {"file": "cloud/web.yaml"}}}
    write(root, "vms.yaml", domain_yaml("web", host="hv1", **spec))
    assert cli("apply", str(root)).code == 0
    assert volumes(root, "hv1") == {"web-root", "web-cidata.iso"}

    # A move keeps its disks: the operator copies the disk's volume to the target pool first.
    with connect(load_manifests(root).hosts["hv2"], write=True) as target:
        target.create_volume(VolumeChange("images", "web-root", capacity=1024**3, format="qcow2"))
    write(root, "vms.yaml", domain_yaml("web", host="hv2", **spec))
    plan = planned(root)
    assert ("delete-volume", "hv1", "web", "web-cidata.iso") in plan
    assert plan.index(("move", "hv1", "web", "")) < plan.index(
        ("delete-volume", "hv1", "web", "web-cidata.iso")
    )
    applied = cli("apply", str(root))
    assert applied.code == 0, applied.out + applied.err
    assert volumes(root, "hv1") == {"web-root"}, "the disk stays (data); the seed is derived"
    assert volumes(root, "hv2") == {"web-root", "web-cidata.iso"}
    assert cli("plan", str(root)).code == 0


def test_removing_cloud_init_deletes_the_seed_through_a_saved_plan_too(tmp_path):
    root = tmp_path
    hosts(root, "hv1")
    write(root, "cloud/web.yaml", USER_DATA)
    spec = {"disks": [disk("web-root")], "cloudInit": {"userData": {"file": "cloud/web.yaml"}}}
    write(root, "vms.yaml", domain_yaml("web", **spec))
    assert cli("apply", str(root)).code == 0

    write(root, "vms.yaml", domain_yaml("web", disks=[disk("web-root")]))
    assert planned(root) == [("update", "hv1", "web", ""), ("delete-volume", "hv1", "web", "web-cidata.iso")]
    saved = tmp_path / "plan.json"
    assert cli("plan", str(root), "--out", str(saved)).code == 2
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert volumes(root) == {"web-root"}
    assert cli("plan", str(root)).code == 0


def test_a_saved_plan_creates_a_seeded_domain_from_the_files_it_was_made_with(tmp_path):
    """F7: a saved plan holds a seed's digest (never its files); apply --plan builds the image
    from the manifests given to it, and refuses when they hold another seed or none."""
    root = tmp_path / "repo"
    hosts(root, "hv1")
    secret = "#cloud-config\npassword: saved-plan-secret-77\n"
    write(root, "cloud/web.yaml", secret)
    spec = {"disks": [disk("web-root")], "cloudInit": {"userData": {"file": "cloud/web.yaml"}}}
    write(root, "vms.yaml", domain_yaml("web", **spec))
    saved = tmp_path / "plan.json"
    made = cli("plan", str(root), "--out", str(saved))
    assert made.code == 2, made.out + made.err
    assert "+ seed web" in made.out and "saved-plan-secret-77" not in saved.read_text()

    elsewhere = cli("apply", str(tmp_path / "nowhere"), "--plan", str(saved))
    assert elsewhere.code == 1 and volumes(root) == set()
    write(root, "cloud/web.yaml", secret + "# edited\n")
    edited = cli("apply", str(root), "--plan", str(saved))
    assert edited.code == 1 and "the cloud-init seeds are not the ones the plan was made with" in edited.err
    assert volumes(root) == set()

    write(root, "cloud/web.yaml", secret)
    applied = cli("apply", str(root), "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert volumes(root) == {"web-root", "web-cidata.iso"}
    assert cli("plan", str(root)).code == 0, "the digest recorded is the one the files have"


def test_a_seed_left_by_an_apply_stopped_before_the_define_is_taken_and_blocks_nothing(tmp_path):
    """An interrupted first apply: the seed was uploaded, the domain never defined. The next apply
    writes that seed again (the adapter writes only over a cloud-init seed or zeros) and goes on,
    for that domain and the others of the host."""
    from tests.sandbox.test_pools import seed

    root = tmp_path
    seed(
        root,
        "<pool type='dir'><name>images</name><target><path>/var/lib/sandbox-hv1</path></target>\n"
        "  <volume type='file'><name>web-cidata.iso</name><capacity unit='MiB'>1</capacity>"
        "<target><format type='raw'/></target></volume>\n</pool>\n",
    )
    hosts(root, "hv1")
    write(root, "cloud/web.yaml", USER_DATA)
    spec = {"disks": [disk("web-root")], "cloudInit": {"userData": {"file": "cloud/web.yaml"}}}
    write(root, "vms.yaml", domain_yaml("web", **spec) + "---\n" + domain_yaml("db", disks=[disk("db-root")]))
    applied = cli("apply", str(root))
    assert applied.code == 0, applied.out + applied.err
    assert "volume images/web-cidata.iso exists and no disk uses it: taken as the seed" in applied.out
    assert volumes(root) == {"web-root", "web-cidata.iso", "db-root"}
    again = cli("plan", str(root))
    assert again.code == 0, again.out + again.err
