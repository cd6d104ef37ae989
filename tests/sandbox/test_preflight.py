"""A host's environment as the libvirt adapter reads it (test driver, sandbox), held against domains."""

from pathlib import Path

import libvirt
import pytest

from reconciler.adapters.libvirt.environment import local_interfaces
from reconciler.adapters.libvirt.host import LibvirtHypervisor, connect
from reconciler.engine.hypervisor import NetworkFact, PathFact
from reconciler.engine.preflight import preflight, wanted_paths
from reconciler.offline.snapshot import Snapshot, SnapshotHypervisor, snapshot_host
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import Host
from tests.helpers import REPO, domain_model

IMAGES = "/var/lib/libvirt/images"
NODE = f"""<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
       <active>4</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>8388608</memory>
  <network><name>default</name><bridge name='virbr0'/><forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/></network>
  <network><name>lab</name><bridge name='virbr1'/></network>
  <interface type='bridge' name='br0'><start mode='onboot'/>
    <bridge><interface type='ethernet' name='eth0'><mac address='52:54:00:aa:bb:01'/></interface></bridge>
  </interface>
  <interface type='ethernet' name='eth1'><mac address='52:54:00:aa:bb:02'/></interface>
  <pool type='dir'><name>images</name><target><path>{IMAGES}</path></target>
    <volume type='file'><name>web.qcow2</name><capacity unit='G'>1</capacity></volume>
  </pool>
</node>
"""


@pytest.fixture
def simulated(tmp_path: Path):
    """A test-driver host with networks, bridges and a storage pool declared in its node file."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    conn = libvirt.open(f"test://{node}")
    try:
        yield LibvirtHypervisor("sim", conn, in_process=True)
    finally:
        conn.close()


def test_the_adapter_reports_networks_bridges_and_pool_files(simulated):
    conn = simulated.conn
    conn.networkLookupByName("lab").destroy()
    conn.networkLookupByName("default").setAutostart(1)
    paths = [f"{IMAGES}/web.qcow2", f"{IMAGES}/gone.qcow2", "/srv/elsewhere.img"]
    environment = simulated.environment(paths)
    assert environment.networks == {
        "default": NetworkFact(active=True, autostart=True),
        "lab": NetworkFact(active=False, autostart=False),
    }
    assert environment.bridges == {"br0": "bridge", "eth1": "ethernet"}
    assert environment.paths[f"{IMAGES}/web.qcow2"] == PathFact(exists=True)
    assert environment.paths[f"{IMAGES}/gone.qcow2"] == PathFact(exists=False)
    elsewhere = environment.paths["/srv/elsewhere.img"]
    assert elsewhere.exists is None and "no storage pool holds /srv" in elsewhere.note
    assert environment.unchecked == ()


def test_a_file_added_to_a_pool_folder_is_found_after_a_refresh(simulated):
    pool = simulated.conn.storagePoolLookupByName("images")
    pool.createXML("<volume><name>new.qcow2</name><capacity unit='M'>1</capacity></volume>", 0)
    assert simulated.environment([f"{IMAGES}/new.qcow2"]).paths[f"{IMAGES}/new.qcow2"].exists is True


def test_preflight_on_the_simulated_host_names_each_problem(simulated):
    simulated.conn.networkLookupByName("lab").destroy()
    domains = {
        "web": domain_model(
            "web",
            disks=[{"path": f"{IMAGES}/web.qcow2"}, {"path": f"{IMAGES}/gone.qcow2"}],
            interfaces=[{"network": "default"}, {"network": "lab"}, {"network": "nope"}, {"bridge": "br9"}],
        ),
        "db": domain_model("db", interfaces=[{"bridge": "br0"}], state="stopped"),
    }
    result = preflight(domains, simulated.environment(wanted_paths(domains.values())))
    assert result.errors == (
        "web: spec.interfaces[1].network: network 'lab' is not active, so the domain cannot start "
        "(virsh net-start lab)",
        "web: spec.interfaces[2].network: network 'nope' does not exist on the host (networks: default, lab)",
        "web: spec.interfaces[3].bridge: bridge 'br9' does not exist on the host",
        f"web: spec.disks[1].path: {IMAGES}/gone.qcow2 does not exist on the host",
    )
    assert result.warnings == ()


def test_test_default_has_an_active_default_network():
    conn = libvirt.open("test:///default")
    try:
        environment = LibvirtHypervisor("default", conn, in_process=True).environment([])
    finally:
        conn.close()
    assert environment.networks is not None and environment.networks["default"].active
    assert environment.bridges is not None and "br0" not in environment.bridges


def _sandbox_host(path: Path) -> Host:
    return Host.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "s"},
            "spec": {"uri": f"sandbox:{path}"},
        }
    )


def test_a_fresh_sandbox_declares_no_network_so_networks_bridges_and_files_are_not_checked(tmp_path):
    with connect(_sandbox_host(tmp_path / "s.xml"), write=False) as hypervisor:
        environment = hypervisor.environment([f"{IMAGES}/web.qcow2"])
    assert environment.networks is None and environment.bridges is None
    assert environment.unchecked == (
        "networks: not checked: this simulated host (libvirt's test driver, a sandbox) declares none",
        "bridges: not checked: this simulated host (libvirt's test driver, a sandbox) declares none",
    )
    # a sandbox is not this machine: its files are never looked for on this machine's disk
    assert environment.paths[f"{IMAGES}/web.qcow2"].exists is None


def test_a_sandbox_whose_node_file_declares_networks_is_checked(tmp_path):
    state = tmp_path / "s.xml"
    state.write_text(NODE)
    domains = {"web": domain_model("web", interfaces=[{"network": "other"}])}
    with connect(_sandbox_host(state), write=False) as hypervisor:
        result = preflight(domains, hypervisor.environment(wanted_paths(domains.values())))
    assert result.errors == (
        "web: spec.interfaces[0].network: network 'other' does not exist on the host "
        "(networks: default, lab)",
    )


def test_the_example_manifests_pass_preflight():
    manifests = load_manifests(REPO / "manifests")
    for name, host in manifests.hosts.items():
        domains = manifests.domains[name]
        with connect(host, write=False) as hypervisor:
            result = preflight(domains, hypervisor.environment(wanted_paths(domains.values())))
        assert result.errors == () and result.warnings == (), name
        assert result.unchecked  # what a simulated host cannot tell is said, not guessed


def test_a_snapshot_plans_preflight_as_the_live_host_did(simulated):
    domains = {
        "web": domain_model("web", disks=[{"path": f"{IMAGES}/gone.qcow2"}], interfaces=[{"network": "x"}])
    }
    paths = wanted_paths(domains.values())
    live = preflight(domains, simulated.environment(paths))
    recorded = snapshot_host("test:///sim", simulated.observe(), simulated.environment(paths))
    document = Snapshot(taken_at="now", hosts={"sim": recorded}).model_dump_json(by_alias=True)
    offline = SnapshotHypervisor("sim", Snapshot.model_validate_json(document).hosts["sim"])
    assert preflight(domains, offline.environment(paths)) == live
    assert len(live.errors) == 2


def test_without_libvirt_s_interface_api_this_machine_s_bridges_come_from_sysfs(tmp_path):
    (tmp_path / "br0" / "bridge").mkdir(parents=True)
    (tmp_path / "eth0").mkdir()
    assert local_interfaces(tmp_path) == {"br0": "bridge", "eth0": "ethernet"}
    assert local_interfaces(tmp_path / "absent") == {}
