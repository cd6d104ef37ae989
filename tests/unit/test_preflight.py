"""Pre-flight (pure): desired domains held against a host's environment, and snapshots of that environment."""

import json

import pytest

from reconciler.engine.hypervisor import HostEnvironment, HostObservation, NetworkFact, PathFact
from reconciler.engine.preflight import Preflight, preflight, wanted_paths
from reconciler.offline.snapshot import Snapshot, recorded_environment, snapshot_host
from tests.helpers import domain_model

DISK = "/var/lib/libvirt/images/web.qcow2"
KERNEL = "/srv/guest/vmlinuz"

HOST = HostEnvironment(
    networks={
        "default": NetworkFact(active=True, autostart=True),
        "idle": NetworkFact(active=False, autostart=False),
        "manual": NetworkFact(active=True, autostart=False),
    },
    bridges={"br0": "bridge", "eth0": "ethernet"},
    paths={DISK: PathFact(exists=True), KERNEL: PathFact(exists=True)},
)


def check(environment: HostEnvironment = HOST, **domains: dict) -> Preflight:
    return preflight({name: domain_model(name, **spec) for name, spec in domains.items()}, environment)


def test_a_domain_the_host_can_run_passes():
    result = check(
        web={
            "interfaces": [{"network": "default"}, {"bridge": "br0"}],
            "disks": [{"path": DISK}],
            "boot": {"kernel": KERNEL},
            "autostart": True,
        }
    )
    assert result == Preflight()
    assert result.ok


def test_a_missing_network_bridge_or_file_is_an_error_naming_domain_field_and_name():
    missing = "/var/lib/libvirt/images/db.qcow2"
    environment = HostEnvironment(
        HOST.networks, HOST.bridges, {**HOST.paths, missing: PathFact(exists=False)}
    )
    result = check(
        environment,
        web={"interfaces": [{"network": "default"}, {"network": "nope"}, {"bridge": "br9"}]},
        db={"disks": [{"path": DISK}, {"path": missing}], "state": "stopped"},
    )
    assert result.errors == (
        "web: spec.interfaces[1].network: network 'nope' does not exist on the host "
        "(networks: default, idle, manual)",
        "web: spec.interfaces[2].bridge: bridge 'br9' does not exist on the host",
        "db: spec.disks[1].path: /var/lib/libvirt/images/db.qcow2 does not exist on the host",
    )
    assert not result.ok


def test_an_inactive_network_blocks_a_domain_to_run_and_warns_for_a_stopped_one():
    running = check(web={"interfaces": [{"network": "idle"}]})
    assert running.errors == (
        "web: spec.interfaces[0].network: network 'idle' is not active, so the domain cannot start "
        "(virsh net-start idle)",
    )
    stopped = check(web={"interfaces": [{"network": "idle"}], "state": "stopped"})
    assert (
        stopped.errors == () and len(stopped.warnings) == 1 and "'idle' is not active" in stopped.warnings[0]
    )


def test_an_autostarting_domain_on_a_network_that_does_not_autostart_is_warned_about():
    result = check(web={"interfaces": [{"network": "manual"}], "autostart": True})
    assert result.errors == ()
    assert result.warnings == (
        "web: spec.interfaces[0].network: network 'manual' does not start with the host but the domain "
        "does: it would fail to start after a reboot (virsh net-autostart manual)",
    )
    assert check(web={"interfaces": [{"network": "manual"}]}) == Preflight()


def test_a_bridge_libvirt_sees_as_another_type_is_a_warning():
    result = check(web={"interfaces": [{"bridge": "eth0"}]})
    assert result.errors == ()
    assert result.warnings[0].startswith(
        "web: spec.interfaces[0].bridge: libvirt reports 'eth0' as an interface"
    )


@pytest.mark.parametrize(("state", "blocking"), [("running", True), ("stopped", False)])
def test_a_file_qemu_cannot_read_blocks_a_domain_to_run_and_warns_for_a_stopped_one(state, blocking):
    why = "folder /root (mode 700, owner root:root) is not searchable by libvirt-qemu"
    environment = HostEnvironment(paths={"/root/vmlinuz": PathFact(exists=True, qemu_denied=why)})
    result = check(environment, web={"boot": {"kernel": "/root/vmlinuz"}, "state": state})
    expected = f"web: spec.boot.kernel: QEMU cannot read /root/vmlinuz: {why}; "
    found = result.errors if blocking else result.warnings
    assert len(found) == 1 and found[0].startswith(expected)
    assert (result.warnings if blocking else result.errors) == ()


def test_a_disk_must_be_writable_but_a_kernel_only_readable():
    read_only = PathFact(exists=True, qemu_cannot_write="/x/img (mode 644, owner root:root) is not writable")
    environment = HostEnvironment(paths={"/x/img": read_only})
    assert check(environment, web={"boot": {"kernel": "/x/img"}}) == Preflight()
    [error] = check(environment, web={"disks": [{"path": "/x/img"}]}).errors
    assert error.startswith("web: spec.disks[0].path: QEMU cannot read and write /x/img: /x/img (mode 644")


def test_what_was_not_checked_is_listed_once_and_blocks_nothing():
    remote = PathFact(None, note="not checked: the host is not this machine, and no storage pool holds /srv")
    environment = HostEnvironment(
        paths={"/srv/a.qcow2": remote},
        unchecked=("networks: not checked: this simulated host declares none",),
    )
    result = check(
        environment,
        a={"disks": [{"path": "/srv/a.qcow2"}], "interfaces": [{"network": "anything"}, {"bridge": "br7"}]},
        b={"disks": [{"path": "/srv/a.qcow2"}], "boot": {"kernel": "/srv/never-asked"}},
    )
    assert result.errors == () and result.warnings == ()
    assert result.unchecked == (
        "networks: not checked: this simulated host declares none",
        "/srv/a.qcow2: not checked: the host is not this machine, and no storage pool holds /srv",
        "/srv/never-asked: not checked: not asked for",
    )


def test_wanted_paths_are_every_disk_kernel_and_initrd_once():
    domains = [
        domain_model(
            "a", disks=[{"path": "/d/a"}, {"path": "/d/shared"}], boot={"kernel": "/k", "initrd": "/i"}
        ),
        domain_model("b", disks=[{"path": "/d/shared"}]),
    ]
    assert wanted_paths(domains) == ("/d/a", "/d/shared", "/k", "/i")


def _snapshot_json(environment: HostEnvironment | None) -> str:
    host = snapshot_host("qemu+ssh://hv1/system", HostObservation(4, 8 * 1024**3, ()), environment)
    return Snapshot(taken_at="2025-01-01T00:00:00+00:00", hosts={"hv1": host}).model_dump_json(by_alias=True)


def test_a_snapshot_records_the_environment_and_gives_it_back():
    environment = HostEnvironment(
        networks=HOST.networks,
        bridges=HOST.bridges,
        paths={
            DISK: PathFact(exists=True),
            "/gone": PathFact(exists=False),
            "/far": PathFact(None, note="n"),
        },
        unchecked=("bridges: not checked: x",),
    )
    loaded = Snapshot.model_validate_json(_snapshot_json(environment)).hosts["hv1"]
    back = recorded_environment(loaded, [DISK, "/gone", "/far", "/new"])
    assert back.networks == HOST.networks and back.bridges == HOST.bridges
    assert back.unchecked == ("bridges: not checked: x",)
    assert back.paths == {
        DISK: PathFact(exists=True),
        "/gone": PathFact(exists=False),
        "/far": PathFact(None, note="n"),
        "/new": PathFact(None, note="not checked: not recorded in the snapshot"),
    }


def test_a_snapshot_taken_before_environments_were_recorded_still_loads():
    document = json.loads(_snapshot_json(None))
    del document["hosts"]["hv1"]["environment"]  # the key did not exist in older snapshots
    loaded = Snapshot.model_validate(document).hosts["hv1"]
    back = recorded_environment(loaded, [DISK])
    assert back.networks is None and back.bridges is None
    assert back.paths[DISK].exists is None
    result = preflight(
        {"web": domain_model("web", disks=[{"path": DISK}], interfaces=[{"network": "x"}])}, back
    )
    assert result.errors == ()
    assert "the snapshot records no environment" in result.unchecked[0]
