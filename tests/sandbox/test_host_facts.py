"""Host facts the policy measures against, as the libvirt adapter reads them."""

from pathlib import Path

from reconciler.adapters.libvirt.facts import local_swap
from reconciler.adapters.libvirt.host import connect
from reconciler.spec.models import Host


def test_local_swap_reads_the_kernel(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nSwapTotal:       2097148 kB\nSwapFree: 2097148 kB\n")
    assert local_swap(meminfo) == 2097148 * 1024
    assert local_swap(tmp_path / "missing") is None
    assert isinstance(local_swap(), int)  # this machine's own /proc/meminfo


def test_sandbox_facts(tmp_path: Path):
    host = Host.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "h"},
            "spec": {"uri": f"sandbox:{tmp_path}/s.xml", "capacity": {"cpus": 6, "memory": "12GiB"}},
        }
    )
    with connect(host, write=False) as hypervisor:
        observed = hypervisor.observe()
    # the test driver has no node memory stats, memory parameters or swap: node info and zero KSM
    assert (observed.cpus, observed.memory, observed.swap, observed.ksm_saved) == (6, 12 * 1024**3, None, 0)
