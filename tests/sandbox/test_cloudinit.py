"""cloud-init seeds and consoles on the sandbox (libvirt's test driver), through the CLI.

The test driver has storage pools and volumes, but no volume upload (``virStorageVolUpload``: "this
function is not supported by the connection driver"), and keeps no volume content at all. So here
the seed volume is made at the image's size and holds nothing; what is tested is the rest: the
volume made in its pool before the domain is defined, the cdrom and the digest in the definition,
a changed seed as a reseed only, the seed volume deleted with a pruned domain, the graphics
password set from its file, and neither ever in a plan, a saved plan or a snapshot. The upload
itself, and the image read back, are tested on a real libvirtd (tests/e2e/test_cloudinit.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import libvirt
import pytest

from reconciler.engine.seediso import build_seed_iso
from reconciler.engine.seeds import SEED_VOLUME_BYTES
from reconciler.spec.cloudinit import Seed
from tests.helpers import cli, host_yaml, write

SECRET = "cloud-secret-4b1d"
PASSWORD = "vnc-pw1"
POOL = """\
apiVersion: virt-reconcile/v1
kind: Pool
metadata: {name: images}
spec: {type: dir, path: /var/lib/sandbox-images}
"""


DOMAIN = """\
apiVersion: virt-reconcile/v1
kind: Domain
metadata: {name: web-01}
spec:
  memory: 1GiB
  disks: [{volume: {pool: images, name: web-01-root, size: 1GiB}}]
  cloudInit: {userData: {file: cloud/web.yaml}}
  graphics: {type: vnc, passwordFile: PASSWORD_FILE}
  serial: true
"""


def without_seed_digest(xml: str) -> str:
    return re.sub(r"seed=['\"][0-9a-f]+['\"]", "seed=X", xml)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (tmp_path / "web.vnc").write_text(PASSWORD + "\n")  # on this machine, outside git
    write(root, "hosts.yaml", host_yaml() + "---\n" + POOL)
    write(root, "domains.yaml", DOMAIN.replace("PASSWORD_FILE", str(tmp_path / "web.vnc")))
    write(root, "cloud/web.yaml", f"#cloud-config\npassword: {SECRET}\n")
    return root


def lookup(root: Path) -> tuple[libvirt.virConnect, str, str]:
    """The sandbox opened read-only: the domain's persistent XML, plain and secure."""
    conn = libvirt.open(f"test://{root / 'state' / 'hv1.xml'}")
    dom = conn.lookupByName("web-01")
    plain = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    secure = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    return conn, plain, secure


def seed_volumes(conn: libvirt.virConnect) -> dict[str, int]:
    pool = conn.storagePoolLookupByName("images")
    return {vol.name(): vol.info()[1] for vol in pool.listAllVolumes() if vol.name().endswith("-cidata.iso")}


def test_a_seed_and_a_console_from_empty_to_running_and_back(tree: Path, tmp_path: Path):
    seen: list[str] = []
    for fmt in ("text", "json", "markdown"):
        planned = cli("plan", str(tree), "--format", fmt)
        assert planned.code == 2, planned.out + planned.err
        seen.append(planned.out)
    actions = json.loads(seen[1])["actions"]
    kinds = [action["action"] for action in actions]
    assert kinds.index("reseed") < kinds.index("define")
    [reseed] = [action for action in actions if action["action"] == "reseed"]
    digest = reseed["changes"][0]["after"].removeprefix("sha256:")
    image = build_seed_iso(Seed.of("web-01", "images", {"user-data": (tree / "cloud/web.yaml").read_bytes()}))
    assert reseed["volume"]["capacity"] == SEED_VOLUME_BYTES >= len(image)  # any seed fits: written in place

    applied = cli("apply", str(tree))
    assert applied.code == 0, applied.out + applied.err
    assert "the test driver keeps no content" in applied.out
    seen.append(applied.out)
    conn, plain, secure = lookup(tree)
    try:
        assert seed_volumes(conn) == {"web-01-cidata.iso": SEED_VOLUME_BYTES}
    finally:
        conn.close()
    assert "<source pool='images' volume='web-01-cidata.iso'/>" in plain and "<readonly/>" in plain
    assert f'seed="{digest}"' in plain or f"seed='{digest}'" in plain
    assert "passwd" not in plain and f"passwd='{PASSWORD}'" in secure, "the password came from its file"
    assert "<serial type='pty'>" in plain
    assert cli("plan", str(tree)).code == 0, "applied: nothing left to do"

    snapshot = tmp_path / "snap.json"
    assert cli("snapshot", str(tree), "--out", str(snapshot)).code == 0
    seen.append(snapshot.read_text())
    assert not [output for output in seen if SECRET in output or PASSWORD in output]


def test_a_changed_seed_is_a_reseed_that_redefines_nothing(tree: Path, tmp_path: Path):
    assert cli("apply", str(tree)).code == 0
    _conn, before, _secure = lookup(tree)
    _conn.close()
    (tree / "cloud/web.yaml").write_text(f"#cloud-config\npassword: {SECRET}-2\n")
    planned = cli("plan", str(tree), "--format", "json")
    assert planned.code == 2
    [action] = json.loads(planned.out)["actions"]
    assert (action["action"], action["restart"]) == ("reseed", False)
    assert action["reason"] == "read at the next boot (a reboot inside the guest too)"
    new = action["changes"][0]["after"].removeprefix("sha256:")
    saved = cli("plan", str(tree), "--out", str(tmp_path / "p.json"))  # the seed's digest, not its files
    assert saved.code == 2 and SECRET not in (tmp_path / "p.json").read_text()

    applied = cli("apply", str(tree), "--plan", str(tmp_path / "p.json"))  # the image built from the files
    assert applied.code == 0, applied.out + applied.err
    conn, after, _secure = lookup(tree)
    conn.close()
    assert f"seed='{new}'" in after or f'seed="{new}"' in after
    assert without_seed_digest(after) == without_seed_digest(before), "only the recorded digest changed"
    assert cli("plan", str(tree)).code == 0


def test_a_pruned_domain_takes_its_seed_volume_along_even_through_a_saved_plan(tree: Path):
    assert cli("apply", str(tree)).code == 0
    write(tree, "domains.yaml", "# no domains\n")  # cloud/web.yaml stays: user-data is no manifest
    write(tree, "hosts.yaml", host_yaml(prune=True) + "---\n" + POOL)
    planned = cli("plan", str(tree), "--format", "json")
    kinds = [(a["action"], (a["volume"] or {}).get("name")) for a in json.loads(planned.out)["actions"]]
    assert kinds[:2] == [("undefine", None), ("delete-volume", "web-01-cidata.iso")]
    saved = tree.parent / "prune.json"  # a saved plan carries the deletion (no seed content to carry)
    assert cli("plan", str(tree), "--out", str(saved), "--allow-mass-delete").code == 2
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    conn = libvirt.open(f"test://{tree / 'state' / 'hv1.xml'}")
    try:
        assert seed_volumes(conn) == {}
    finally:
        conn.close()
