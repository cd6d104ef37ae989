"""Hypothesis: for random desired sets on a sandbox host, apply then plan is empty."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.spec.manifests import load_manifests
from tests.helpers import domain_yaml, host_yaml, write


def connect(host, write):
    return libvirt_host.connect(host, write=write)


@st.composite
def domain_specs(draw):
    memory = draw(st.integers(min_value=64, max_value=8192))
    spec = {
        "vcpus": draw(st.integers(min_value=1, max_value=16)),
        "memory": f"{memory}MiB",
        "currentMemory": f"{draw(st.integers(min_value=32, max_value=memory))}MiB",
        "state": draw(st.sampled_from(["running", "stopped"])),
        "autostart": draw(st.booleans()),
        "type": draw(st.sampled_from(["kvm", "qemu"])),
        "machine": draw(st.sampled_from([None, "q35", "pc"])),
        "balloon": draw(st.sampled_from(["virtio", "none"])),
        "disks": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "path": st.sampled_from(["/img/a.qcow2", "/img/b.raw", "/dev/vg/c"]),
                        "bus": st.sampled_from(["virtio", "sata", "scsi"]),
                    }
                ),
                max_size=2,
            )
        ),
        "interfaces": draw(
            st.lists(
                st.one_of(
                    st.fixed_dictionaries({"network": st.just("default")}),
                    st.fixed_dictionaries(
                        {"bridge": st.just("br0"), "model": st.sampled_from(["e1000", "virtio"])}
                    ),
                ),
                max_size=2,
            )
        ),
    }
    return {key: value for key, value in spec.items() if value is not None}


def own_disks(specs: dict) -> dict:
    """Each domain's disk paths made its own (one disk image, one domain), keeping the drawn choice."""
    return {
        name: {
            **spec,
            "disks": [
                {**disk, "path": f"{disk['path']}-{name}-{index}"} for index, disk in enumerate(spec["disks"])
            ],
        }
        for name, spec in specs.items()
    }


desired_sets = st.dictionaries(
    st.sampled_from([f"vm-{i}" for i in range(6)]), domain_specs(), max_size=5
).map(own_disks)


def converge(root: Path, domains: dict) -> None:
    text = "---\n".join(domain_yaml(name, **spec) for name, spec in domains.items())
    write(root, "domains.yaml", text or "# none\n")
    applied = reconcile(
        load_manifests(root), connect, ReconcileOptions(apply=True, allow_delete=True, allow_mass_delete=True)
    )
    assert not applied.failed, applied.results
    replanned = reconcile(load_manifests(root), connect, ReconcileOptions(apply=False))
    assert replanned.plan.actions == [], [(a.kind, a.domain, a.changes) for a in replanned.plan.actions]


@given(first=desired_sets, second=desired_sets)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_apply_then_plan_is_empty_from_any_state_to_any_state(first, second):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write(root, "hosts.yaml", host_yaml(cpus=64, memory="64GiB"))  # room for any drawn set
        converge(root, first)
        converge(root, second)
