"""A graphics passwordFile checked before anything is applied (sandbox: libvirt's test driver): a
file missing, not a regular file, or holding a password too long for VNC blocks the host in the
plan, so the apply never makes the domain's volume and then fails at its define."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from tests.helpers import cli, host_yaml, write
from tests.sandbox.test_cloudinit import POOL

DOMAIN = """\
apiVersion: virt-reconcile/v1
kind: Domain
metadata: {name: web-01}
spec:
  memory: 1GiB
  disks: [{volume: {pool: images, name: web-01-root, size: 1GiB}}]
  graphics: {type: vnc, passwordFile: PASSWORD_FILE}
"""


def tree(tmp_path: Path, password_file: Path) -> Path:
    root = tmp_path / "repo"
    write(root, "hosts.yaml", host_yaml() + "---\n" + POOL)
    write(root, "domains.yaml", DOMAIN.replace("PASSWORD_FILE", str(password_file)))
    return root


def volumes(root: Path) -> list[str]:
    state = root / "state" / "hv1.xml"
    if not state.exists():
        return []  # nothing was ever applied
    conn = libvirt.open(f"test://{state}")
    try:
        return [volume.name() for volume in conn.storagePoolLookupByName("images").listAllVolumes()]
    except libvirt.libvirtError:
        return []  # the pool was never made
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot be read on this machine: No such file or directory"),
        ("folder", "not a regular file"),
        ("", "empty"),
        ("123456789\n", "the password is 9 characters, longer than the 8 a vnc password can be"),
    ],
)
def test_a_password_file_that_cannot_be_used_blocks_the_host_before_anything_is_made(
    tmp_path: Path, content: str | None, problem: str
):
    path = tmp_path / "web.vnc"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    root = tree(tmp_path, path)
    planned = cli("plan", str(root))
    assert planned.code == 1, planned.out + planned.err
    assert f"web-01: spec.graphics.passwordFile: {path}: {problem}" in planned.out
    applied = cli("apply", str(root))
    assert applied.code == 1
    assert "create-volume web-01:" not in applied.out, "nothing is applied on a blocked host"
    assert volumes(root) == []


def test_a_good_password_file_passes_and_the_definition_carries_it(tmp_path: Path):
    path = tmp_path / "web.vnc"
    path.write_text("12345678\n")  # VNC's longest
    root = tree(tmp_path, path)
    applied = cli("apply", str(root))
    assert applied.code == 0, applied.out + applied.err
    assert volumes(root) == ["web-01-root"]
