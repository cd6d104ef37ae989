"""cloud-init seeds: files read at load time within the manifest root and a size limit, an ISO that
cloud-init's NoCloud reads (label cidata) and that is the same bytes for the same files, and plans
that show the seed's digest and never its content."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pycdlib
import pytest

from reconciler.engine.actions import ActionKind, Phase
from reconciler.engine.hypervisor import HostObservation, PoolObservation, VolumeObservation
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.seediso import build_seed_iso, read_seed_iso
from reconciler.engine.seeds import SEED_VOLUME_BYTES
from reconciler.errors import ManifestError
from reconciler.files.keys import SigningKey
from reconciler.offline.savedplan import save_plan
from reconciler.report import Printer, render_json, render_markdown, render_text
from reconciler.spec.cloudinit import MAX_SEED_FILE_BYTES, Seed, generated_meta_data, seed_digest
from reconciler.spec.manifests import DomainKey, load_manifests
from reconciler.spec.models import Domain, HostSpec, Owner
from tests.helpers import observed_domain, write

SECRET = "hunter2-cloud-secret"
USER_DATA = f"#cloud-config\nchpasswd: {{list: 'root:{SECRET}'}}\n".encode()
POOL_YAML = """\
apiVersion: virt-reconcile/v1
kind: Pool
metadata: {name: images}
spec: {type: dir, path: /var/lib/images}
"""


def seed(**files: bytes) -> Seed:
    return Seed.of("web-01", "images", {name.replace("_", "-"): content for name, content in files.items()})


# ------------------------------------------------------------------------------------ the image


def test_the_image_has_the_label_and_the_files_cloud_init_looks_for():
    network = b"version: 2\nethernets: {eth0: {dhcp4: true}}\n"
    image = build_seed_iso(seed(user_data=USER_DATA, network_config=network))
    label, files = read_seed_iso(image)
    assert label == "cidata"
    assert files == {
        "user-data": USER_DATA,
        "meta-data": generated_meta_data("web-01"),
        "network-config": network,
    }
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:  # Joliet names too (Windows guests, cloudbase-init), and plain ISO 9660 ones
        joliet = sorted(c.file_identifier().decode("utf-16-be") for c in iso.list_children(joliet_path="/"))
        plain = sorted(c.file_identifier().decode() for c in iso.list_children(iso_path="/"))
    finally:
        iso.close()
    assert [name for name in joliet if name not in (".", "..")] == [
        "meta-data",
        "network-config",
        "user-data",
    ]
    assert "USERDATA.;1" in plain and "METADATA.;1" in plain


def test_the_same_files_give_the_same_bytes_whenever_and_wherever(monkeypatch):
    first = build_seed_iso(seed(user_data=USER_DATA))
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # pycdlib stamps time.time()
    try:
        again = build_seed_iso(seed(user_data=USER_DATA))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert again == first
    assert build_seed_iso(seed(user_data=USER_DATA + b"#\n")) != first


def test_meta_data_left_out_is_made_from_the_name_and_the_digest_frames_each_file():
    made = seed(user_data=b"")
    assert dict(made.files)["meta-data"] == b'instance-id: "web-01"\nlocal-hostname: "web-01"\n'
    assert seed_digest((("user-data", b"ab"), ("meta-data", b"c"))) != seed_digest(
        (("user-data", b"a"), ("meta-data", b"bc"))
    )
    assert made.digest == seed(user_data=b"").digest and len(made.digest) == 16
    assert SECRET not in repr(seed(user_data=USER_DATA))  # a repr (a log, a traceback) shows no content


# ------------------------------------------------------------------------------------- loading


def domain_with(
    cloud_init: str, disks: str = "[{volume: {pool: images, name: web-01-root, size: 1GiB}}]"
) -> str:
    return f"""\
apiVersion: virt-reconcile/v1
kind: Domain
metadata: {{name: web-01}}
spec:
  memory: 1GiB
  disks: {disks}
  cloudInit: {cloud_init}
"""


def tree(tmp_path: Path, cloud_init: str, **kwargs: str) -> Path:
    write(tmp_path, "hosts.yaml", f"{host()}---\n{POOL_YAML}")
    write(tmp_path, "vms/web.yaml", domain_with(cloud_init, **kwargs))
    return tmp_path


def host() -> str:
    from tests.helpers import host_yaml

    return host_yaml()


def problems(root: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(root)
    return [str(problem) for problem in info.value.problems]


def test_files_are_read_relative_to_their_manifest_and_are_not_manifests_themselves(tmp_path):
    root = tree(tmp_path, "{userData: {file: cloud/web.yaml}, networkConfig: {file: ../net.yml}}")
    (root / "vms/cloud").mkdir()
    (root / "vms/cloud/web.yaml").write_bytes(USER_DATA)  # a .yaml file in the tree, not a manifest
    (root / "net.yml").write_bytes(b"version: 2\n")
    manifests = load_manifests(root)
    loaded = manifests.seeds[DomainKey("hv1", "web-01")]
    assert dict(loaded.files) == {
        "user-data": USER_DATA,
        "meta-data": generated_meta_data("web-01"),
        "network-config": b"version: 2\n",
    }
    assert loaded.pool == "images"  # the pool of the first volume disk
    assert manifests.domains["hv1"]["web-01"].spec.cloud_init.pool == "images"


def test_user_data_no_domain_names_any_more_is_still_no_manifest(tmp_path):
    write(tmp_path, "hosts.yaml", host())
    write(tmp_path, "cloud/old-user-data.yaml", USER_DATA.decode())  # left behind by a removed domain
    write(tmp_path, "cloud/script.yml", "#!/bin/sh\necho: hi\n")
    assert load_manifests(tmp_path).seeds == {}
    write(tmp_path, "cloud/network-config.yaml", "version: 2\n")  # no mark: named .yaml, read as one
    assert "cloud/network-config.yaml:1: apiVersion: expected" in problems(tmp_path)[0]


def test_a_file_outside_the_manifest_root_is_refused_even_through_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"#cloud-config\n")
    root = tmp_path / "repo"
    tree(root, "{userData: {file: ../../outside.txt}, metaData: {file: link}}")
    (root / "vms/link").symlink_to(outside)
    found = problems(root)
    assert len(found) == 2
    assert found[0].startswith(
        "vms/web.yaml:7: spec.cloudInit.userData.file: ../../outside.txt: outside the manifest root"
    )
    assert found[1].startswith(
        "vms/web.yaml:7: spec.cloudInit.metaData.file: link: outside the manifest root"
    )


def test_a_file_too_large_missing_or_not_regular_is_named_with_its_field(tmp_path):
    root = tree(tmp_path, "{userData: {file: big}, metaData: {file: gone}, networkConfig: {file: fifo}}")
    (root / "vms/big").write_bytes(b"#" * (MAX_SEED_FILE_BYTES + 1))
    os.mkfifo(root / "vms/fifo")  # reading it would block: it is refused before any read
    assert problems(root) == [
        "vms/web.yaml:7: spec.cloudInit.userData.file: big: larger than 256 KiB, the most a cloud-init "
        "seed file may hold",
        "vms/web.yaml:7: spec.cloudInit.metaData.file: gone: cannot be read: No such file or directory",
        "vms/web.yaml:7: spec.cloudInit.networkConfig.file: fifo: not a regular file",
    ]


def test_the_pool_is_named_when_no_disk_has_a_volume_and_must_be_a_pool_of_the_host(tmp_path):
    write(tmp_path, "hosts.yaml", f"{host()}---\n{POOL_YAML}")
    write(tmp_path, "a.yaml", domain_with("{}", disks="[{path: /img/a.qcow2}]"))
    [problem] = problems(tmp_path)
    assert problem.startswith("a.yaml:7: spec.cloudInit: ")
    assert "pool is required: no disk of the domain has a volume" in problem
    write(tmp_path, "a.yaml", domain_with("{pool: fast}", disks="[{path: /img/a.qcow2}]"))
    [problem] = problems(tmp_path)
    assert problem.startswith("a.yaml:7: spec.cloudInit.pool: unknown pool 'fast' on host 'hv1'")
    write(tmp_path, "a.yaml", domain_with("{userData: {file: /etc/shadow}}"))
    [problem] = problems(tmp_path)
    assert "spec.cloudInit.userData.file" in problem and "must be relative" in problem


# -------------------------------------------------------------------------------------- planning

ROOT_DISK = {"volume": {"pool": "images", "name": "web-01-root", "size": "1GiB"}}


def web(**spec: object) -> Domain:
    return Domain.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": "web-01"},
            "spec": {
                "memory": "1GiB",
                "disks": [ROOT_DISK],
                "cloudInit": {"userData": {"file": "u"}},
                **spec,
            },
        }
    )


def pool(*volumes: str) -> PoolObservation:
    held = tuple(VolumeObservation(name, f"/var/lib/images/{name}", 2**30, 0, "raw") for name in volumes)
    return PoolObservation("images", "dir", "/var/lib/images", True, True, 2**40, 0, 2**40, held)


def desired(domains: dict[str, Domain], made: Seed | None, **rules: object) -> DesiredHost:
    return DesiredHost(
        "hv1",
        "sandbox:/x",
        domains,
        lambda name: Owner(manifest="vms/web.yaml", seed=made.digest if made else ""),
        deletion=DeletionRules(**rules),
        seeds={"web-01": made} if made is not None else {},
    )


def managed(recorded: str, *, active: bool = True) -> HostObservation:
    """web-01 defined by an earlier apply that uploaded the seed ``recorded`` into pool images."""
    owner = Owner(manifest="vms/web.yaml", seed=recorded)
    live = observed_domain(
        "web-01", owner, active=active, memory="1GiB", disks=[ROOT_DISK], cloudInit={"pool": "images"}
    )
    return HostObservation(16, 64 * 2**30, (live,), pools=(pool("web-01-root", "web-01-cidata.iso"),))


def test_a_new_domain_gets_its_seed_uploaded_before_it_is_defined():
    made = seed(user_data=USER_DATA)
    plan = build_host_plan(
        desired({"web-01": web()}, made), HostObservation(16, 64 * 2**30, (), pools=(pool(),))
    )
    kinds = [(action.kind, action.phase) for action in plan.actions]
    reseed = kinds.index((ActionKind.RESEED, Phase.CREATE_VOLUME))
    assert reseed < kinds.index((ActionKind.DEFINE, Phase.DEFINE))
    action = plan.actions[reseed]
    assert action.changes[0].after == f"sha256:{made.digest}"
    assert action.volume.name == "web-01-cidata.iso" and action.volume.capacity == SEED_VOLUME_BYTES
    assert read_seed_iso(action.seed.image)[1]["user-data"] == USER_DATA
    define = next(a for a in plan.actions if a.kind is ActionKind.DEFINE)
    assert f'seed="{made.digest}"' in define.xml and "web-01-cidata.iso" in define.xml


def test_a_changed_seed_is_a_reseed_only_and_an_unchanged_one_nothing():
    made = seed(user_data=USER_DATA)
    assert build_host_plan(desired({"web-01": web()}, made), managed(made.digest)).actions == ()
    plan = build_host_plan(desired({"web-01": web()}, made), managed("0123456789abcdef"))
    [action] = plan.actions
    assert (action.kind, action.phase, action.restart) == (ActionKind.RESEED, Phase.RESEED, False)
    assert [(c.field, c.before, c.after) for c in action.changes] == [
        ("cloudInit.seed", "sha256:0123456789abcdef", f"sha256:{made.digest}")
    ]
    assert plan.pending_restarts == ()  # read at the next boot; no restart forced or waited for


def test_a_seed_volume_gone_from_its_pool_is_uploaded_again():
    made = seed(user_data=USER_DATA)
    observed = managed(made.digest)
    observed = HostObservation(16, 64 * 2**30, observed.domains, pools=(pool("web-01-root"),))
    [action] = build_host_plan(desired({"web-01": web()}, made), observed).actions
    assert action.kind is ActionKind.RESEED and action.volume.previous == 0


def test_a_pruned_domain_takes_its_seed_volume_with_it():
    plan = build_host_plan(desired({}, None, allow=True), managed("0123456789abcdef", active=False))
    assert [(a.kind, a.volume.name if a.volume else None) for a in plan.actions] == [
        (ActionKind.UNDEFINE, None),
        (ActionKind.DELETE_VOLUME, "web-01-cidata.iso"),
    ]


def test_no_plan_format_and_no_saved_plan_holds_the_seed_content(tmp_path):
    made = seed(user_data=USER_DATA)
    host_plan = build_host_plan(desired({"web-01": web()}, made), managed("0123456789abcdef"))
    plan = Plan(hosts={"hv1": host_plan})
    text = io.StringIO()
    render_text(plan, Printer(text, color=False))
    shown = [text.getvalue(), render_json(plan), render_markdown(plan), repr(plan), repr(host_plan.actions)]
    for output in shown:
        assert SECRET not in output
        assert f"sha256:{made.digest}" in output or output.startswith(("Plan(", "(Action"))
    assert json.loads(render_json(plan))["actions"][0]["changes"][0]["after"] == f"sha256:{made.digest}"
    specs = {"hv1": HostSpec.model_validate({"uri": "sandbox:/x"})}
    save_plan(tmp_path / "p.json", plan, specs=specs, key=SigningKey(tmp_path / "key", b"k" * 32))
    saved = (tmp_path / "p.json").read_text()  # the seed's digest, never its image or files
    assert SECRET not in saved and f'"seed": "{made.digest}"' in saved


def test_host_plan_shape_is_unchanged_for_domains_without_seeds():
    plain = Domain.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": "db"},
            "spec": {"memory": "1GiB"},
        }
    )
    plan: HostPlan = build_host_plan(desired({"db": plain}, None), HostObservation(16, 64 * 2**30, ()))
    assert [a.kind for a in plan.actions] == [ActionKind.DEFINE, ActionKind.START]
