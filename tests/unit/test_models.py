import pytest
from pydantic import ValidationError

from reconciler.spec.models import Domain, DomainSpec, Host, Interface


def spec(**fields):
    return DomainSpec.model_validate({"memory": "2GiB", **fields})


def test_defaults_are_filled():
    s = spec()
    assert s.vcpus == 1
    assert s.current_memory == s.memory == 2 * 1024**3
    assert (s.state, s.autostart, s.type, s.arch, s.machine, s.balloon) == (
        "running",
        False,
        "kvm",
        "x86_64",
        None,
        "virtio",
    )


def test_current_memory_above_memory_is_refused():
    with pytest.raises(ValidationError, match="currentMemory 4GiB is larger than memory 2GiB"):
        spec(currentMemory="4GiB")


def test_invalid_memory_is_reported_once():
    with pytest.raises(ValidationError) as info:
        DomainSpec.model_validate({"memory": 2048})
    assert [e["loc"] for e in info.value.errors()] == [("memory",)]


def test_disk_targets_follow_the_bus():
    s = spec(
        disks=[{"path": "/a"}, {"path": "/b"}, {"path": "/c", "bus": "sata"}, {"path": "/d", "bus": "ide"}]
    )
    assert [d.target for d in s.disks] == ["vda", "vdb", "sda", "hda"]


def test_explicit_targets_are_kept_and_skipped():
    s = spec(disks=[{"path": "/a", "target": "vdb"}, {"path": "/b"}])
    assert [d.target for d in s.disks] == ["vdb", "vda"]


def test_duplicate_targets_refused():
    with pytest.raises(ValidationError, match="two disks use target 'vda'"):
        spec(disks=[{"path": "/a", "target": "vda"}, {"path": "/b", "target": "vda"}])


def test_relative_disk_path_refused():
    with pytest.raises(ValidationError, match="must be absolute"):
        spec(disks=[{"path": "images/a.qcow2"}])


@pytest.mark.parametrize("nic", [{}, {"network": "default", "bridge": "br0"}])
def test_interface_needs_exactly_one_source(nic):
    with pytest.raises(ValidationError, match="exactly one of"):
        Interface.model_validate(nic)


def test_mac_is_lowercased():
    assert Interface.model_validate({"bridge": "br0", "mac": "52:54:00:AA:BB:CC"}).mac == "52:54:00:aa:bb:cc"


@pytest.mark.parametrize("name", ["-web", "web 01", "a" * 65, "", "wéb"])
def test_invalid_domain_names(name):
    with pytest.raises(ValidationError):
        Domain.model_validate(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Domain",
                "metadata": {"name": name},
                "spec": {"memory": "1GiB"},
            }
        )


def test_unknown_fields_are_errors():
    with pytest.raises(ValidationError, match="Extra inputs"):
        spec(cpus=2)


def test_spec_hash_is_stable_and_sensitive():
    assert spec().spec_hash() == spec().spec_hash()
    assert spec().spec_hash() != spec(vcpus=2).spec_hash()


def test_host_uri_must_be_a_uri():
    with pytest.raises(ValidationError, match="not a libvirt URI"):
        Host.model_validate(
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Host",
                "metadata": {"name": "h"},
                "spec": {"uri": "hv1"},
            }
        )


def test_host_policy_defaults():
    host = Host.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "h"},
            "spec": {"uri": "qemu:///system"},
        }
    )
    assert host.spec.overcommit.cpu.ratio == 4.0
    assert host.spec.overcommit.memory.reserved == 1024**3
    assert host.spec.overcommit.enforcement == "enforce"
    assert host.spec.prune is False


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"vcpus": True}, ("vcpus",)),
        ({"vcpus": 2.0}, ("vcpus",)),
        ({"autostart": 1}, ("autostart",)),
        ({"deletionProtection": "yes"}, ("deletionProtection",)),
        ({"memory": "0KiB"}, ("memory",)),
    ],
)
def test_numbers_and_booleans_are_never_converted(fields, loc):
    """``vcpus: true`` was 1 vCPU, ``autostart: 1`` was true, ``memory: 0KiB`` a domain."""
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    assert [e["loc"] for e in info.value.errors()] == [loc]


def test_ratios_are_finite_bounded_and_whole_numbers_stay_numbers():
    from reconciler.spec.hostpolicy import CpuPolicy, MemoryPolicy

    assert CpuPolicy.model_validate({"ratio": 4}).ratio == 4.0  # a YAML int is a ratio too
    for ratio in (float("inf"), float("nan"), 1e308, True, "2"):
        with pytest.raises(ValidationError):
            CpuPolicy.model_validate({"ratio": ratio})
        with pytest.raises(ValidationError):
            MemoryPolicy.model_validate({"ratio": ratio})


def test_sizes_are_bounded_by_16_pib():
    """A size past 16 PiB is a typo; one with hundreds of digits raised OverflowError."""
    assert spec(memory="16384TiB").memory == 16 * 1024**5
    for size in ("16385TiB", "1" * 400 + ".5GiB", "9" * 5000 + "KiB"):
        with pytest.raises(ValidationError, match="larger than 16 PiB"):
            spec(memory=size)
